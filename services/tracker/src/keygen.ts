#!/usr/bin/env node
/**
 * `shoal-handout-keygen [--name NAME] PRIVATE_DIR [PUBLIC_DIR]`: makes an Ed25519 signing key:
 * the tracker's hand-out key (NAME `handout`, the default) or the seed server's record key
 * (`--name seed-record`).
 *
 * Writes `PRIVATE_DIR/NAME.key` (Ed25519, PKCS#8 PEM, mode 0600) unless it exists, and
 * `PUBLIC_DIR/NAME.pub` (its public key, SPKI PEM; PUBLIC_DIR defaults to PRIVATE_DIR) from
 * it, so running it again changes nothing. `openssl genpkey -algorithm ed25519` and
 * `openssl pkey -pubout` make the same files. Exit status: 0 done, 2 a usage or file error.
 */
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const args = process.argv.slice(2);
let name = 'handout';
if (args[0] === '--name') {
  name = args[1] ?? '';
  args.splice(0, 2);
}
const [privateDir, publicDir] = args;
if (privateDir === undefined || args.length > 2 || !/^[a-z][a-z0-9-]*$/.test(name)) {
  process.stderr.write('usage: shoal-handout-keygen [--name NAME] PRIVATE_DIR [PUBLIC_DIR]\n');
  process.exit(2);
}
const keyPath = join(privateDir, `${name}.key`);
const pubPath = join(publicDir ?? privateDir, `${name}.pub`);
try {
  let privatePem = await readFile(keyPath, 'utf8').catch(() => undefined);
  if (privatePem === undefined) {
    const { privateKey } = generateKeyPairSync('ed25519');
    privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    // `wx`: never replaces a key another run wrote meanwhile.
    await writeFile(keyPath, privatePem, { mode: 0o600, flag: 'wx' });
    process.stdout.write(`wrote ${keyPath}\n`);
  }
  const publicPem = createPublicKey(privatePem).export({ type: 'spki', format: 'pem' }).toString();
  await writeFile(pubPath, publicPem);
  process.stdout.write(`wrote ${pubPath}\n`);
} catch (error) {
  process.stderr.write(`shoal-handout-keygen: ${(error as Error).message}\n`);
  process.exit(2);
}
