import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { signHandoutToken } from '@shoal/proto';
import { generateHandoutKeys } from '@shoal/testkit';

import {
  ConfigError,
  loadConfig,
  PieceTokenVerifier,
  readHandoutPrivateKey,
  readHandoutPublicKeys,
  TOKEN_CLOCK_SKEW_MS,
} from '../src/index.js';
import { z } from 'zod';

const blob = `sha256:${'c'.repeat(64)}`;
const keys = generateHandoutKeys();
const next = generateHandoutKeys();
const NOW = 1_764_470_000_000;

describe('PieceTokenVerifier', () => {
  const token = signHandoutToken(keys.privateKey, { blob, peer: 'p1', exp: NOW + 60_000 });
  const auth = `Shoal-Piece ${token}`;

  it('accepts a good token and refuses every bad request, by reason', () => {
    let now = NOW;
    const verifier = new PieceTokenVerifier([keys.publicKey], () => now);
    assert.equal(verifier.check(auth, 'p1', blob).ok, true);
    const reason = (a: string | undefined, peer: string | undefined, b = blob): string => {
      const result = verifier.check(a, peer, b);
      return result.ok ? 'ok' : result.reason;
    };
    assert.equal(reason(undefined, 'p1'), 'missing');
    assert.equal(reason('', 'p1'), 'missing');
    assert.equal(reason(`Bearer ${token}`, 'p1'), 'malformed');
    assert.equal(reason('Shoal-Piece x.y.z', 'p1'), 'malformed');
    assert.equal(reason(auth, 'p2'), 'wrong-peer');
    assert.equal(reason(auth, 'p1', `sha256:${'d'.repeat(64)}`), 'wrong-blob');
    const stranger = signHandoutToken(next.privateKey, { blob, peer: 'p1', exp: NOW + 60_000 });
    assert.equal(reason(`Shoal-Piece ${stranger}`, 'p1'), 'bad-signature');
    // Remembered tokens still expire by the clock.
    now = NOW + 60_000 + TOKEN_CLOCK_SKEW_MS;
    assert.equal(reason(auth, 'p1'), 'ok');
    now += 1;
    assert.equal(reason(auth, 'p1'), 'expired');
  });

  it('forgets expired tokens as new ones come, not only once the cache is full', () => {
    let now = NOW;
    const verifier = new PieceTokenVerifier([keys.publicKey], () => now);
    // Ten minutes of rollouts: every minute, 50 tokens that live two minutes.
    for (let minute = 0; minute < 10; minute += 1) {
      for (let i = 0; i < 50; i += 1) {
        const fresh = signHandoutToken(keys.privateKey, {
          blob,
          peer: `p${i}`,
          exp: now + 120_000,
        });
        assert.equal(verifier.check(`Shoal-Piece ${fresh}`, `p${i}`, blob).ok, true);
      }
      now += 60_000;
    }
    // Those of the last three minutes at most (two of life, the skew), not all 500.
    assert.ok(verifier.size <= 150, `${verifier.size} tokens remembered`);
  });

  it('accepts tokens of every configured key during a rotation', () => {
    const verifier = new PieceTokenVerifier([keys.publicKey, next.publicKey], () => NOW);
    const newer = signHandoutToken(next.privateKey, { blob, peer: 'p1', exp: NOW + 60_000 });
    assert.equal(verifier.check(auth, 'p1', blob).ok, true);
    assert.equal(verifier.check(`shoal-piece ${newer}`, 'p1', blob).ok, true);
  });
});

describe('hand-out key files', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) {
      await rm(dir, { recursive: true, force: true });
    }
  });
  const file = async (text: string): Promise<string> => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-keys-'));
    dirs.push(dir);
    const path = join(dir, 'key.pem');
    await writeFile(path, text);
    return path;
  };

  it('read a private key and several public keys', async () => {
    const key = await readHandoutPrivateKey(await file(keys.privatePem));
    assert.equal(key.asymmetricKeyType, 'ed25519');
    const publics = await readHandoutPublicKeys(await file(keys.publicPem + next.publicPem));
    assert.equal(publics.length, 2);
  });

  it('refuse placeholders, junk, missing files and other key types', async () => {
    await assert.rejects(
      readHandoutPrivateKey(await file('change-me-handout-key\n')),
      /placeholder/,
    );
    await assert.rejects(
      readHandoutPublicKeys(await file('change-me-handout-public-key\n')),
      /placeholder/,
    );
    await assert.rejects(readHandoutPublicKeys(await file('hello')), /no PEM public key/);
    await assert.rejects(readHandoutPrivateKey(await file('hello')), ConfigError);
    await assert.rejects(readHandoutPrivateKey('/nonexistent/key'), /cannot read/);
    const { generateKeyPairSync } = await import('node:crypto');
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const pem = rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await assert.rejects(readHandoutPrivateKey(await file(pem)), /must be Ed25519/);
  });
});

describe('placeholder secrets in the environment', () => {
  it('are refused by every configuration, naming the variable', () => {
    const schema = z.object({ SHOAL_NATS_URL: z.string() });
    assert.throws(
      () => loadConfig(schema, { SHOAL_NATS_URL: 'nats://agent:change-me-agent@nats:4222' }),
      (error: unknown) =>
        error instanceof ConfigError &&
        error.problems.some((p) => p.startsWith('SHOAL_NATS_URL: holds the deploy files')),
    );
    assert.doesNotThrow(() => loadConfig(schema, { SHOAL_NATS_URL: 'nats://a:b@nats:4222' }));
  });
});
