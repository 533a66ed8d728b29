// The ES module entry point exports the same objects as the CommonJS one,
// and the package's export map and declarations name files that exist.

import test from 'node:test';
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import * as esm from '../index.mjs';
import esmDefault from '../index.mjs';

const require = createRequire(import.meta.url);
const cjs = require('..');
const dir = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

test('every CommonJS export is an ES module export, the same object', () => {
  for (const [name, value] of Object.entries(cjs)) {
    assert.strictEqual(esm[name], value, name);
  }
  assert.strictEqual(esmDefault, cjs);
});

test('package.json: entry points exist, no runtime dependencies, Node 18 and later', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const entry = pkg.exports['.'];
  for (const f of [pkg.main, pkg.types, entry.import, entry.require, entry.types]) {
    assert.ok(fs.existsSync(path.join(dir, f)), f);
  }
  assert.strictEqual(pkg.dependencies, undefined);
  assert.strictEqual(pkg.engines.node, '>=18');
});

test('index.d.ts declares every export', () => {
  const dts = fs.readFileSync(path.join(dir, 'index.d.ts'), 'utf8');
  for (const name of Object.keys(cjs)) {
    assert.match(dts, new RegExp(`export (declare )?(function|class|const) ${name}\\b`), name);
  }
});
