/**
 * The repository stands on its own: every relative link in its Markdown leads to a file or
 * folder inside it, and nothing names a path outside it (such as `../shared/`).
 */
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';

import { run } from '@shoal/testkit';

import { REPO_ROOT } from '../src/deploy.js';

async function trackedFiles(): Promise<string[]> {
  const { stdout } = await run('git', ['-C', REPO_ROOT, 'ls-files']);
  return stdout.split('\n').filter((f) => f !== '');
}

describe('documentation links', () => {
  it('lead only to files inside the repository', async () => {
    const files = await trackedFiles();
    const markdown = files.filter((f) => f.endsWith('.md'));
    assert.ok(markdown.length > 5, 'the Markdown files are found');
    const broken: string[] = [];
    for (const file of markdown) {
      const text = await readFile(join(REPO_ROOT, file), 'utf8');
      for (const match of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = (match[1] ?? '').split('#')[0] ?? '';
        if (target === '' || /^[a-z]+:/i.test(target)) {
          continue;
        }
        const path = resolve(dirname(join(REPO_ROOT, file)), target);
        const inside = !relative(REPO_ROOT, path).startsWith('..');
        const exists = await stat(path).then(
          () => true,
          () => false,
        );
        if (!inside || !exists) {
          broken.push(`${file}: ${target}`);
        }
      }
    }
    assert.deepEqual(broken, []);
  });

  it('name no path outside the repository', async () => {
    const offenders: string[] = [];
    for (const file of await trackedFiles()) {
      if (!/\.(md|ts|js|json|ya?ml|sh|toml|conf)$/.test(file) || file === 'package-lock.json') {
        continue;
      }
      const text = await readFile(join(REPO_ROOT, file), 'utf8');
      if (
        /\.\.\/shared\/|shared\/(DESIGN|STYLE)\.md/.test(text) &&
        !file.endsWith('docs-links.test.ts')
      ) {
        offenders.push(file);
      }
    }
    assert.deepEqual(offenders, []);
  });
});
