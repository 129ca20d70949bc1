/**
 * The hand-out signing key of test clusters. Every tracker a test process starts signs with
 * the same Ed25519 key and every agent and seed server trusts it, so every swarm test runs
 * with piece authentication on, as production does.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { signHandoutToken, type HandoutTokenClaims } from '@shoal/proto';

/** A hand-out key pair, as objects and as PEM text. */
export interface HandoutKeys {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** PKCS#8 PEM, what `SHOAL_TRACKER_HANDOUT_KEY_FILE` holds. */
  readonly privatePem: string;
  /** SPKI PEM, what `SHOAL_*_HANDOUT_PUBLIC_KEYS_FILE` holds. */
  readonly publicPem: string;
}

/** A new Ed25519 key pair. */
export function generateHandoutKeys(): HandoutKeys {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privateKey,
    publicKey,
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** A key pair made on first use and kept for the rest of the process. */
function oncePerProcess(): () => HandoutKeys {
  let keys: HandoutKeys | undefined;
  return () => (keys ??= generateHandoutKeys());
}

/** The hand-out key pair test clusters of this process share. */
export const testHandoutKeys = oncePerProcess();

/**
 * The seed record key pair test clusters of this process share (a key of its own, as in
 * production: the seed server's, not the tracker's). Every test seed server signs its
 * `pieces-verified` records with it and every test agent trusts it.
 */
export const testRecordKeys = oncePerProcess();

/** Writes `text` to `dir/file` (private: mode 0600); returns its path. */
async function writeKeyFile(
  dir: string,
  file: string,
  text: string,
  mode: 'private' | 'public',
): Promise<string> {
  const path = join(dir, file);
  await writeFile(path, text, mode === 'private' ? { mode: 0o600 } : {});
  return path;
}

/** Writes the hand-out private key into `dir` (`handout.key`); returns its path. */
export function writeHandoutPrivateKey(
  dir: string,
  keys: HandoutKeys = testHandoutKeys(),
): Promise<string> {
  return writeKeyFile(dir, 'handout.key', keys.privatePem, 'private');
}

/** Writes the hand-out public key into `dir` (`handout.pub`); returns its path. */
export function writeHandoutPublicKeys(
  dir: string,
  keys: HandoutKeys = testHandoutKeys(),
): Promise<string> {
  return writeKeyFile(dir, 'handout.pub', keys.publicPem, 'public');
}

/** Writes the record private key into `dir` (`seed-record.key`); returns its path. */
export function writeRecordPrivateKey(
  dir: string,
  keys: HandoutKeys = testRecordKeys(),
): Promise<string> {
  return writeKeyFile(dir, 'seed-record.key', keys.privatePem, 'private');
}

/** Writes the record public key into `dir` (`seed-record.pub`); returns its path. */
export function writeRecordPublicKeys(
  dir: string,
  keys: HandoutKeys = testRecordKeys(),
): Promise<string> {
  return writeKeyFile(dir, 'seed-record.pub', keys.publicPem, 'public');
}

/** A token signed with the test clusters' key (or `keys`), for tests that call peers directly. */
export function signTestToken(
  claims: HandoutTokenClaims,
  keys: HandoutKeys = testHandoutKeys(),
): string {
  return signHandoutToken(keys.privateKey, claims);
}
