// The typed client: `client.d.ts` is served beside `client.js`, and a page written against it
// (types/example.ts, with misuses the declarations must reject) passes `tsc --noEmit`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Gateway, repoRoot } from './harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));

test('client.d.ts checks the example with tsc --noEmit', () => {
  const tsc = path.join(here, 'node_modules', '.bin', 'tsc');
  const result = spawnSync(tsc, ['--noEmit', '-p', path.join(here, 'types', 'tsconfig.json')], {
    encoding: 'utf8',
    timeout: 120000,
  });
  assert.equal(result.status, 0, `tsc failed:\n${result.stdout}${result.stderr}`);
});

test('the gateway serves client.d.ts beside client.js', async (t) => {
  const gateway = await Gateway.start({ regions: ['AE'] });
  t.after(() => gateway.stop());
  const response = await fetch(`${gateway.origin}/client.d.ts`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^application\/typescript/);
  const served = await response.text();
  const file = readFileSync(path.join(repoRoot, 'crates', 'notify-gateway', 'assets', 'client.d.ts'), 'utf8');
  assert.equal(served, file);
});
