'use strict';
// Starts a real hmac-agent for the tests: $HMAC_AGENT_BIN, or one built
// from this repository with `go build`.

const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const REPO = path.resolve(__dirname, '..', '..', '..', '..');

/** The test vectors: $HMAC_AGENT_VECTORS, else ../shared/vectors beside the repository. */
function vectorsDir() {
  return process.env.HMAC_AGENT_VECTORS || path.join(path.dirname(REPO), 'shared', 'vectors');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

class AgentProcess {
  /**
   * options.config: a function of the temporary directory returning
   * {toml, socket}, to start the agent with that configuration.
   * The function may also return env, more environment for the agent
   * (SOFTHSM2_CONF, say).
   */
  constructor(options = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmac-agent-node-'));
    this.extraEnv = {};
    this.socket = path.join(this.dir, 'run', 'agent.sock');
    this.args = ['serve', '--socket', this.socket, '--log-level', 'warn'];
    if (options.config) {
      const { toml, socket, env } = options.config(this.dir);
      this.extraEnv = env || {};
      const file = path.join(this.dir, 'agent.toml');
      fs.writeFileSync(file, toml, { mode: 0o600 });
      this.socket = socket;
      this.args = ['serve', '--config', file, '--log-level', 'warn'];
    }
    this.binary = process.env.HMAC_AGENT_BIN;
    if (!this.binary) {
      this.binary = path.join(this.dir, 'hmac-agent');
      execFileSync('go', ['build', '-o', this.binary, './cmd/hmac-agent'], { cwd: REPO, stdio: 'inherit' });
    }
    this.logPath = path.join(this.dir, 'agent.log');
    this.proc = null;
  }

  /** The environment the agent and its CLI run with. */
  env() {
    return {
      ...process.env,
      ...this.extraEnv,
      XDG_STATE_HOME: path.join(this.dir, 'state'),
      HMAC_AGENT_SOCK: this.socket,
    };
  }

  async start() {
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn(this.binary, this.args, {
      env: this.env(),
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    // The agent must not outlive the tests, even when the runner stops
    // this process for a timeout.
    const child = this.proc;
    const killChild = () => child.kill('SIGKILL');
    process.once('exit', killChild);
    child.once('exit', () => process.removeListener('exit', killChild));
    let exited = false;
    this.proc.once('exit', () => {
      exited = true;
    });
    const deadline = Date.now() + 15000;
    for (;;) {
      if (await canConnect(this.socket)) return;
      if (exited || Date.now() > deadline) {
        throw new Error(`hmac-agent did not start; see ${this.logPath}:\n${fs.readFileSync(this.logPath, 'utf8')}`);
      }
      await sleep(20);
    }
  }

  async stop() {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
    await exited;
    clearTimeout(timer);
  }

  /** Runs the agent's CLI against this agent; resolves with its stdout. */
  cli(args, input) {
    return execFileSync(this.binary, args, { env: this.env(), input, encoding: 'utf8' });
  }

  async cleanup() {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// A runner that stops this file for a timeout sends SIGTERM: exit through
// the 'exit' handlers above so that no agent is left running.
process.once('SIGTERM', () => process.exit(143));

function canConnect(socketPath) {
  return new Promise((resolve) => {
    const s = net.createConnection(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

module.exports = { AgentProcess, REPO, vectorsDir, sleep };
