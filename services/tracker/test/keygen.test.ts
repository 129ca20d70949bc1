/**
 * `shoal-handout-keygen`, the compose stack's one-shot key maker: the tracker's hand-out pair
 * by default, the seed server's record pair with `--name seed-record`; a second run keeps
 * the key; a bad name is a usage error.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';

import { makeTempDir } from '@shoal/testkit';

const KEYGEN = join(import.meta.dirname, '..', 'src', 'keygen.js');

async function keygen(args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [KEYGEN, ...args], {
      timeout: 10_000,
    });
    return { code: 0, stdout };
  } catch (error) {
    return { code: (error as { code?: number }).code ?? -1, stdout: '' };
  }
}

describe('shoal-handout-keygen', () => {
  it('makes the named Ed25519 pair once, the public half where asked', async () => {
    const dir = await makeTempDir('keygen');
    try {
      const privateDir = join(dir.path, 'private');
      const publicDir = join(dir.path, 'public');
      await mkdir(privateDir);
      await mkdir(publicDir);
      assert.equal((await keygen([privateDir, publicDir])).code, 0);
      assert.equal((await keygen(['--name', 'seed-record', privateDir, publicDir])).code, 0);
      assert.deepEqual((await readdir(privateDir)).sort(), ['handout.key', 'seed-record.key']);
      assert.deepEqual((await readdir(publicDir)).sort(), ['handout.pub', 'seed-record.pub']);
      const pems: string[] = [];
      for (const name of ['handout', 'seed-record']) {
        const keyFile = join(privateDir, `${name}.key`);
        assert.equal((await stat(keyFile)).mode & 0o777, 0o600, `${name}.key is private`);
        const key = createPrivateKey(await readFile(keyFile, 'utf8'));
        assert.equal(key.asymmetricKeyType, 'ed25519');
        const pub = await readFile(join(publicDir, `${name}.pub`), 'utf8');
        assert.equal(createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString(), pub);
        pems.push(pub);
      }
      assert.notEqual(pems[0], pems[1], 'two keys, not one');
      // Again: the keys are kept.
      const before = await readFile(join(privateDir, 'seed-record.key'), 'utf8');
      const again = await keygen(['--name', 'seed-record', privateDir, publicDir]);
      assert.equal(again.code, 0);
      assert.doesNotMatch(again.stdout, /seed-record\.key/);
      assert.equal(await readFile(join(privateDir, 'seed-record.key'), 'utf8'), before);
    } finally {
      await dir.remove();
    }
  });

  it('refuses a name that is not a plain file name, and a missing directory argument', async () => {
    const dir = await makeTempDir('keygen-bad');
    try {
      assert.equal((await keygen(['--name', '../x', dir.path])).code, 2);
      assert.equal((await keygen(['--name', 'seed-record'])).code, 2);
      assert.equal((await keygen([])).code, 2);
      assert.deepEqual(await readdir(dir.path), []);
    } finally {
      await dir.remove();
    }
  });
});
