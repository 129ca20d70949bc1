/**
 * docs/configuration.md is what the zod schemas generate: the test fails when a variable is
 * added, removed, renamed, re-typed, re-defaulted or re-described without regenerating it, and
 * says how to regenerate.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { makeTempDir } from '@shoal/testkit';

import { REPO_ROOT } from '../src/deploy.js';

const GENERATOR = join(REPO_ROOT, 'tools', 'local', 'dist', 'src', 'config-docs.js');
const REFERENCE = join(REPO_ROOT, 'docs', 'configuration.md');

function check(file: string): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [GENERATOR, '--check', '--file', file], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('configuration reference', () => {
  it('docs/configuration.md is what the schemas generate', () => {
    const result = check(REFERENCE);
    assert.equal(
      result.status,
      0,
      `${result.stderr}(regenerate: npm run build && npm run config-docs)`,
    );
  });

  it('lists every service variable with its type and default', async () => {
    const text = await readFile(REFERENCE, 'utf8');
    for (const [name, type, defaultText] of [
      ['SHOAL_AGENT_REGISTRIES', 'string', '**required**'],
      ['SHOAL_AGENT_CACHE_MAX_BYTES', 'integer (bytes)', '`53687091200`'],
      ['SHOAL_AGENT_HOSTS_MERGE', '`true` \\| `false`', '`false`'],
      ['SHOAL_TRACKER_LISTEN', 'host:port', '`0.0.0.0:65020`'],
      ['SHOAL_SEED_PIECE_AUTH', '`on` \\| `off`', '`on`'],
      ['SHOAL_WATCHER_PREHEAT_TIMEOUT_MS', 'integer (ms)', '`3600000`'],
    ] as const) {
      assert.match(
        text,
        new RegExp(
          `^\\| \`${name}\` +\\| ${type.replace(/[|\\`()*]/g, '\\$&')} +\\| ${defaultText.replace(/[|\\`()*]/g, '\\$&')} +\\| \\S`,
          'm',
        ),
        name,
      );
    }
  });

  it('fails on a reference that drifted, saying how to regenerate', async () => {
    const dir = await makeTempDir('config-docs');
    try {
      const stale = join(dir.path, 'configuration.md');
      await copyFile(REFERENCE, stale);
      const text = await readFile(stale, 'utf8');
      await writeFile(stale, text.replace('`3600000`', '`7200000`'));
      const result = check(stale);
      assert.equal(result.status, 1);
      assert.match(result.stderr, /out of date .*npm run build && npm run config-docs/);
    } finally {
      await dir.remove();
    }
  });
});
