// Type declarations for hmac-agent, the Node.js client of hmac-agent.

/// <reference types="node" />

import { Writable, WritableOptions } from 'stream';

/** The agent's algorithm names; Node's names (`"sha3-256"`, `"sha512-256"`, `"blake2b512"`) are accepted too. */
export type AlgorithmName =
  | 'sha1'
  | 'sha224'
  | 'sha256'
  | 'sha384'
  | 'sha512'
  | 'sha512_224'
  | 'sha512_256'
  | 'sha3_224'
  | 'sha3_256'
  | 'sha3_384'
  | 'sha3_512'
  | 'md5'
  | 'blake2b'
  | 'blake2s'
  | 'sm3';

export type BinaryLike = string | NodeJS.ArrayBufferView;
export type BinaryToTextEncoding = 'hex' | 'base64' | 'base64url' | 'latin1' | 'binary';

export interface AgentOptions {
  /** The agent's socket; default `$HMAC_AGENT_SOCK`, else the agent's default path. */
  path?: string;
  /** Milliseconds allowed to connect and shake hands; default 10000. */
  timeout?: number;
  /** A uid (or user name) the agent may run as besides root and the caller's own; default `$HMAC_AGENT_UID`. */
  agentUid?: number | string;
  /** Milliseconds to wait for each reply before rejecting with RequestTimeout; default 0, as long as the agent takes. */
  requestTimeout?: number;
}

/** One version of a key (docs/keys.md). Times are RFC 3339, present once they happened. */
export interface VersionInfo {
  version: number;
  state: 'current' | 'previous' | 'retired' | 'destroyed';
  created?: string;
  superseded?: string;
  /** When the key's verify_grace ends this previous version's verifying. */
  verifies_until?: string;
  retired?: string;
}

export interface KeyInfo {
  name: string;
  provider: string;
  kind: string;
  algorithms: string[];
  created: string;
  /** The current version, for a key whose provider keeps versions. */
  version?: number;
  /** Every version, oldest first, for a key whose provider keeps versions. */
  versions?: VersionInfo[];
}

/** A tag and the key version that made it; null from an agent of protocol version 1. */
export interface VersionedTag {
  tag: Buffer;
  version: number | null;
}

export interface RotateOptions {
  /** The new version's bytes; absent: generated inside the provider. */
  secret?: NodeJS.ArrayBufferView;
  /** Bytes to generate; 0 or absent: the provider's default. */
  length?: number;
  /** The provider; absent: the one the key name finds. */
  provider?: string;
}

export interface HmacOptions extends WritableOptions {
  /** The Agent to use; default the shared one (`defaultAgent()`). */
  agent?: Agent;
}

export class Agent {
  constructor(options?: AgentOptions | string);
  readonly path: string;
  readonly timeout: number;
  readonly agentUid: number | string | undefined;
  readonly requestTimeout: number;
  /** The tag of data under the named key (`"NAME@N"`: version N alone), in one round trip. */
  mac(key: string, algorithm: AlgorithmName | string, data: BinaryLike, encoding?: BufferEncoding): Promise<Buffer>;
  /** mac, with the key version that made the tag. */
  macVersioned(
    key: string,
    algorithm: AlgorithmName | string,
    data: BinaryLike,
    encoding?: BufferEncoding,
  ): Promise<VersionedTag>;
  /** Rejects with InvalidSignature unless tag is data's tag under a live version of the key (`"NAME@N"`: version N). */
  verifyMac(
    key: string,
    algorithm: AlgorithmName | string,
    data: BinaryLike,
    tag: NodeJS.ArrayBufferView,
  ): Promise<void>;
  verifyMac(
    key: string,
    algorithm: AlgorithmName | string,
    data: BinaryLike,
    tag: string,
    tagEncoding: BinaryToTextEncoding,
  ): Promise<void>;
  /** verifyMac, resolving with the key version whose tag matched (null from an agent of protocol version 1). */
  verifyMacVersioned(
    key: string,
    algorithm: AlgorithmName | string,
    data: BinaryLike,
    tag: NodeJS.ArrayBufferView,
  ): Promise<number | null>;
  verifyMacVersioned(
    key: string,
    algorithm: AlgorithmName | string,
    data: BinaryLike,
    tag: string,
    tagEncoding: BinaryToTextEncoding,
  ): Promise<number | null>;
  createHmac(algorithm: AlgorithmName | string, key: string, options?: WritableOptions): Hmac;
  importKey(name: string, secret: NodeJS.ArrayBufferView, options?: { provider?: string }): Promise<KeyInfo>;
  deleteKey(name: string, options?: { provider?: string }): Promise<void>;
  /** A new version of the key, made current; the agent's owner and root only. */
  rotateKey(name: string, options?: RotateOptions): Promise<VersionInfo>;
  /** Stops a version verifying; with destroy, deletes its object. The agent's owner and root only. */
  retireVersion(name: string, version: number, options?: { destroy?: boolean; provider?: string }): Promise<void>;
  keys(): Promise<KeyInfo[]>;
  status(): Promise<Record<string, unknown>>;
  close(): void;
}

export class Hmac extends Writable {
  private constructor();
  /** The agent's name for the algorithm. */
  readonly algorithm: AlgorithmName;
  /** The tag length in bytes. */
  readonly digestSize: number;
  /** The key version that made or matched the tag, once digest or verify resolved; else null. */
  readonly keyVersion: number | null;
  update(data: BinaryLike): this;
  update(data: string, inputEncoding: BufferEncoding): this;
  digest(encoding?: 'buffer'): Promise<Buffer>;
  digest(encoding: BinaryToTextEncoding): Promise<string>;
  verify(signature: NodeJS.ArrayBufferView): Promise<void>;
  verify(signature: string, encoding: BinaryToTextEncoding): Promise<void>;
  copy(): Promise<Hmac>;
}

export function createHmac(algorithm: AlgorithmName | string, keyName: string, options?: HmacOptions): Hmac;
export function mac(
  keyName: string,
  algorithm: AlgorithmName | string,
  data: BinaryLike,
  encoding?: BufferEncoding,
): Promise<Buffer>;
export function verifyMac(
  keyName: string,
  algorithm: AlgorithmName | string,
  data: BinaryLike,
  tag: NodeJS.ArrayBufferView,
): Promise<void>;
export function verifyMac(
  keyName: string,
  algorithm: AlgorithmName | string,
  data: BinaryLike,
  tag: string,
  tagEncoding: BinaryToTextEncoding,
): Promise<void>;
export function getAlgorithms(): AlgorithmName[];
export function defaultAgent(): Agent;
export function defaultSocketPath(): string;
export const SOCKET_ENV: 'HMAC_AGENT_SOCK';
export const UID_ENV: 'HMAC_AGENT_UID';

/** Every error of this package. `code` is the protocol's name for it; `wireCode` its number, for errors the agent sent. */
export class AgentError extends Error {
  constructor(message?: string);
  code: string;
  wireCode?: number;
}
export class AlreadyFinalized extends AgentError {}
export class InvalidSignature extends AgentError {}
export class UnsupportedAlgorithm extends AgentError {}
export class KeyNotFound extends AgentError {}
export class PermissionDenied extends AgentError {}
export class KeyExists extends AgentError {}
export class InvalidArgument extends AgentError {}
export class NotSupported extends AgentError {}
export class LimitReached extends AgentError {}
export class Unavailable extends AgentError {}
export class ContextLost extends AgentError {}
export class UnknownContext extends AgentError {}
export class BadRequest extends AgentError {}
export class UnknownMessage extends AgentError {}
export class VersionMismatch extends AgentError {}
export class InternalError extends AgentError {}
export class ShuttingDown extends AgentError {}
export class Closed extends AgentError {}
/** Nothing listens at the socket path; the message names it. */
export class AgentNotRunning extends AgentError {}
/** The connection to the agent broke. */
export class ConnectionLost extends AgentError {}
/** The socket could have been bound by a uid that is not accepted; nothing was sent. */
export class UntrustedAgent extends AgentError {}
/** No reply within the Agent's requestTimeout; the request may still complete in the agent. */
export class RequestTimeout extends AgentError {}
