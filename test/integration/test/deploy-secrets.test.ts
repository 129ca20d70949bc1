/**
 * No placeholders in what is deployed: the overlays' Secrets come from files that
 * `scripts/gen-secrets.sh` generates (git-ignored), every overlay renders with them and without
 * a `change-me` anywhere, the leecher gets the seeder's agent password and public key and
 * nothing more, and an overlay rendered before generating stops with the missing file's name.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { cp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { makeTempDir, requireBinary, run } from '@shoal/testkit';

import { generatedK8s, REPO_ROOT, renderOverlay, type K8sObject } from '../src/deploy.js';

const OVERLAYS = ['mixed', 'seeder', 'leecher'] as const;

/** A Secret's values, decoded. */
function secretData(objects: readonly K8sObject[], name: string): Record<string, string> {
  const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === name);
  assert.ok(secret !== undefined, `no Secret ${name}`);
  const data = (secret.data ?? {}) as Record<string, string>;
  const plain = (secret.stringData ?? {}) as Record<string, string>;
  return {
    ...plain,
    ...Object.fromEntries(
      Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
    ),
  };
}

describe('generated secrets', () => {
  for (const overlay of OVERLAYS) {
    it(`${overlay}: every Secret holds generated values, no placeholder`, async () => {
      const objects = await renderOverlay(overlay);
      const secrets = objects.filter((o) => o.kind === 'Secret');
      assert.ok(secrets.length > 0);
      for (const secret of secrets) {
        const values = secretData(objects, secret.metadata.name);
        assert.ok(Object.keys(values).length > 0, secret.metadata.name);
        for (const [key, value] of Object.entries(values)) {
          assert.doesNotMatch(value, /change-?me|placeholder/i, `${secret.metadata.name}.${key}`);
          assert.ok(value.trim() !== '', `${secret.metadata.name}.${key} is empty`);
        }
      }
      assert.doesNotMatch(JSON.stringify(objects), /change-?me/i);
    });
  }

  it('gives every cluster strong passwords, and the tracker a real Ed25519 pair', async () => {
    const mixed = await renderOverlay('mixed');
    const users = secretData(mixed, 'shoal-nats-users');
    assert.deepEqual(Object.keys(users).sort(), ['agent', 'seedserver', 'tracker', 'watcher']);
    for (const password of Object.values(users)) {
      // Letters and digits only: they go into nats://user:password@host URLs; a letter first,
      // for nats-server (see the next test).
      assert.match(password, /^n[0-9a-f]{48}$/);
    }
    assert.equal(new Set(Object.values(users)).size, 4);
    const key = createPrivateKey(secretData(mixed, 'shoal-handout-key')['handout.key'] ?? '');
    assert.equal(key.asymmetricKeyType, 'ed25519');
    const pub = secretData(mixed, 'shoal-handout-public-keys')['handout.pub'] ?? '';
    assert.equal(
      createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString(),
      pub,
      'handout.pub is the public half of handout.key',
    );
    // The seed server's record pair: a key of its own, not the tracker's.
    const record = createPrivateKey(
      secretData(mixed, 'shoal-seed-record-key')['seed-record.key'] ?? '',
    );
    assert.equal(record.asymmetricKeyType, 'ed25519');
    const recordPub = secretData(mixed, 'shoal-handout-public-keys')['seed-record.pub'] ?? '';
    assert.equal(
      createPublicKey(record).export({ type: 'spki', format: 'pem' }).toString(),
      recordPub,
      'seed-record.pub is the public half of seed-record.key',
    );
    assert.notEqual(recordPub, pub);
    const s3 = secretData(mixed, 'shoal-seedserver-s3');
    assert.match(s3.SHOAL_S3_SECRET_ACCESS_KEY ?? '', /^[0-9a-f]{48}$/);
    assert.match(secretData(mixed, 'shoal-watcher-webhook').token ?? '', /^[0-9a-f]{48}$/);

    // The leecher: the seeder's agent password and public key, and no other secret.
    const leecher = await renderOverlay('leecher');
    assert.deepEqual(secretData(leecher, 'shoal-nats-users'), { agent: users.agent });
    assert.equal(secretData(leecher, 'shoal-handout-public-keys')['handout.pub'], pub);
    assert.equal(secretData(leecher, 'shoal-handout-public-keys')['seed-record.pub'], recordPub);
    assert.deepEqual(
      leecher
        .filter((o) => o.kind === 'Secret')
        .map((o) => o.metadata.name)
        .sort(),
      ['shoal-handout-public-keys', 'shoal-nats-users', 'shoal-registry-credentials'],
    );
  });

  it('gives NATS passwords nats-server reads as passwords, run after run', async () => {
    // nats-server reads `$NATS_<USER>_PASSWORD` in auth.conf as a configuration value: before
    // the passwords started with a letter, about one hex string in 13 (`1e24c8...`) was taken
    // for a number and NATS refused to start. 20 runs hold 80 passwords: had that been left,
    // all 80 would pass less than once in 500 runs of this test.
    const nats = requireBinary('nats-server');
    const dir = await makeTempDir('nats-passwords');
    try {
      await cp(
        join(REPO_ROOT, 'deploy', 'k8s', 'base', 'nats', 'auth.conf'),
        join(dir.path, 'auth.conf'),
      );
      const conf = join(dir.path, 'nats.conf');
      await writeFile(conf, 'listen: 127.0.0.1:-1\ninclude ./auth.conf\n');
      for (let i = 0; i < 20; i += 1) {
        const envFile = join(dir.path, `${String(i)}.env`);
        await run('bash', [join(REPO_ROOT, 'scripts', 'gen-secrets.sh'), 'compose', envFile]);
        const passwords = Object.fromEntries(
          (await readFile(envFile, 'utf8'))
            .split('\n')
            .filter((line) => line.startsWith('NATS_'))
            .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
        );
        assert.equal(Object.keys(passwords).length, 4);
        await run(nats, ['-c', conf, '-t'], { env: { ...process.env, ...passwords } }).catch(
          (error: unknown) => {
            throw new Error(`${JSON.stringify(passwords)}: ${(error as Error).message}`);
          },
        );
      }
    } finally {
      await dir.remove();
    }
  });

  it('keeps what it generated when run again', async () => {
    const dir = join(await generatedK8s(), 'secrets');
    const read = async (): Promise<string[]> =>
      Promise.all(
        [
          'nats-users.env',
          'handout.key',
          'handout.pub',
          'seed-record.key',
          'seed-record.pub',
          'seedserver-s3.env',
        ].map((f) => readFile(join(dir, f), 'utf8')),
      );
    const before = await read();
    const { stdout } = await run('bash', [
      join(REPO_ROOT, 'scripts', 'gen-secrets.sh'),
      'k8s',
      dir,
    ]);
    assert.doesNotMatch(stdout, /generated/);
    assert.deepEqual(await read(), before);
  });

  it('rotates a key by its file deleted, the leecher copy by its own', async () => {
    const dir = join(await generatedK8s(), 'secrets');
    const script = join(REPO_ROOT, 'scripts', 'gen-secrets.sh');
    const leecherPub = join(dir, 'leecher', 'handout.pub');
    const before = await readFile(leecherPub, 'utf8');
    assert.equal(before, await readFile(join(dir, 'handout.pub'), 'utf8'));
    await rm(join(dir, 'handout.key'));
    await run('bash', [script, 'k8s', dir]);
    const pub = await readFile(join(dir, 'handout.pub'), 'utf8');
    assert.notEqual(pub, before, 'a new pair');
    assert.equal(
      createPublicKey(createPrivateKey(await readFile(join(dir, 'handout.key')))).export({
        type: 'spki',
        format: 'pem',
      }),
      pub,
    );
    // A leecher's copy is kept: on a leecher's machine it is all there is.
    assert.equal(await readFile(leecherPub, 'utf8'), before);
    // Deleted too, it follows.
    await rm(leecherPub);
    await run('bash', [script, 'k8s', dir]);
    assert.equal(await readFile(leecherPub, 'utf8'), pub);
  });

  it("keeps the leecher's copies on a leecher's own machine, where no seeder file is", async () => {
    const generated = join(await generatedK8s(), 'secrets');
    const dir = await makeTempDir('leecher-machine');
    try {
      const secrets = join(dir.path, 'secrets');
      await cp(join(REPO_ROOT, 'deploy', 'k8s', 'secrets'), secrets, { recursive: true });
      const copies = ['nats-users.env', 'handout.pub', 'seed-record.pub'];
      for (const file of copies) {
        await cp(join(generated, 'leecher', file), join(secrets, 'leecher', file));
      }
      await run('bash', [join(REPO_ROOT, 'scripts', 'gen-secrets.sh'), 'k8s', secrets]);
      for (const file of copies) {
        assert.equal(
          await readFile(join(secrets, 'leecher', file), 'utf8'),
          await readFile(join(generated, 'leecher', file), 'utf8'),
          `leecher/${file} kept`,
        );
      }
    } finally {
      await dir.remove();
    }
  });

  it('makes anew a compose value whose line was deleted, and keeps the others', async () => {
    const dir = await makeTempDir('compose-rotate');
    try {
      const envFile = join(dir.path, '.env');
      const script = join(REPO_ROOT, 'scripts', 'gen-secrets.sh');
      await run('bash', [script, 'compose', envFile]);
      const values = async (): Promise<Map<string, string>> =>
        new Map(
          (await readFile(envFile, 'utf8'))
            .split('\n')
            .filter((line) => /^[A-Z0-9_]+=/.test(line))
            .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
        );
      const first = await values();
      assert.equal(first.size, 6);
      const text = await readFile(envFile, 'utf8');
      await writeFile(envFile, text.replace(/^WATCHER_WEBHOOK_TOKEN=.*\n/m, ''));
      await run('bash', [script, 'compose', envFile]);
      const second = await values();
      assert.equal(second.size, 6);
      for (const [name, value] of first) {
        if (name === 'WATCHER_WEBHOOK_TOKEN') {
          assert.match(second.get(name) ?? '', /^[0-9a-f]{48}$/);
          assert.notEqual(second.get(name), value, 'a new token');
        } else {
          assert.equal(second.get(name), value, `${name} kept`);
        }
      }
    } finally {
      await dir.remove();
    }
  });

  it('stops an overlay rendered before the secrets are generated, naming the missing file', async () => {
    const dir = await makeTempDir('k8s-no-secrets');
    try {
      const k8s = join(dir.path, 'k8s');
      await cp(join(REPO_ROOT, 'deploy', 'k8s'), k8s, { recursive: true });
      // A developer's own generated files play no part.
      for (const sub of ['secrets', join('secrets', 'leecher')]) {
        for (const file of await readdir(join(k8s, sub))) {
          if (/\.(env|key|pub)$/.test(file)) {
            await rm(join(k8s, sub, file));
          }
        }
      }
      for (const overlay of OVERLAYS) {
        await assert.rejects(
          run(requireBinary('kubectl'), ['kustomize', join(k8s, 'overlays', overlay)]),
          /secrets\/(leecher\/)?nats-users\.env: no such file or directory/,
          overlay,
        );
      }
    } finally {
      await dir.remove();
    }
  });
});
