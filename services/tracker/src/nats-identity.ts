#!/usr/bin/env node
/**
 * `shoal-nats-identity`: per-node identity on NATS (see `@shoal/runtime/nats-identity`).
 *
 *   shoal-nats-identity init DIR
 *     Makes the operator, account, system account and agent issuer keys in DIR (each
 *     `<name>.nk`, mode 0600) unless they exist, and from them, unless they exist:
 *     `operator.conf` (for nats-server; no secret in it), `account.pub`, and one credentials
 *     file per service role (`tracker.creds`, `seedserver.creds`, `watcher.creds`, 0600).
 *     Running it again changes nothing.
 *
 *   shoal-nats-identity node DIR PEER_ID OUT [EXPIRES_DAYS]
 *     Mints the credentials of one node (its agent's peer id) into OUT (0600), with the agent
 *     issuer key and `account.pub` of DIR, which are all it reads there.
 *
 * Exit status: 0 done, 2 a usage or file error.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  accountPublicKey,
  newIdentitySeeds,
  nodeCreds,
  operatorConfig,
  SERVICE_ROLES,
  serviceCreds,
  type IdentitySeeds,
} from '@shoal/runtime/nats-identity';

const USAGE =
  'usage: shoal-nats-identity init DIR\n' +
  '       shoal-nats-identity node DIR PEER_ID OUT [EXPIRES_DAYS]\n';
const DAY_MS = 24 * 60 * 60 * 1000;

const SEED_FILES = {
  operator: 'operator.nk',
  account: 'account.nk',
  system: 'system.nk',
  agentIssuer: 'agent-issuer.nk',
} as const satisfies Record<keyof IdentitySeeds, string>;

const readText = (path: string): Promise<string | undefined> =>
  readFile(path, 'utf8').then(
    (text) => text.trim(),
    () => undefined,
  );

/** Writes `path` unless it exists (`wx`: never replaces what another run wrote meanwhile). */
async function writeOnce(path: string, make: () => Promise<string | Uint8Array>, mode: number) {
  if ((await readText(path)) !== undefined) {
    return;
  }
  await writeFile(path, await make(), { mode, flag: 'wx' });
  process.stdout.write(`wrote ${path}\n`);
}

async function init(dir: string): Promise<void> {
  const fresh = newIdentitySeeds();
  for (const [key, file] of Object.entries(SEED_FILES)) {
    await writeOnce(
      join(dir, file),
      () => Promise.resolve(fresh[key as keyof IdentitySeeds]),
      0o600,
    );
  }
  const seeds = await readSeeds(dir);
  await writeOnce(join(dir, 'operator.conf'), () => operatorConfig(seeds), 0o644);
  await writeOnce(join(dir, 'account.pub'), () => Promise.resolve(accountPublicKey(seeds)), 0o644);
  for (const role of SERVICE_ROLES) {
    await writeOnce(join(dir, `${role}.creds`), () => serviceCreds(seeds, role), 0o600);
  }
}

async function readSeeds(dir: string): Promise<IdentitySeeds> {
  const read = async (file: string): Promise<string> => {
    const text = await readText(join(dir, file));
    if (text === undefined) {
      throw new Error(`${join(dir, file)} is missing; run shoal-nats-identity init ${dir}`);
    }
    return text;
  };
  return {
    operator: await read(SEED_FILES.operator),
    account: await read(SEED_FILES.account),
    system: await read(SEED_FILES.system),
    agentIssuer: await read(SEED_FILES.agentIssuer),
  };
}

async function node(dir: string, peer: string, out: string, expiresDays?: string) {
  const agentIssuer = await readText(join(dir, SEED_FILES.agentIssuer));
  const account = await readText(join(dir, 'account.pub'));
  if (agentIssuer === undefined || account === undefined) {
    throw new Error(`${dir} holds no agent-issuer.nk and account.pub; run init first`);
  }
  const days = expiresDays === undefined ? undefined : Number(expiresDays);
  if (days !== undefined && !(Number.isFinite(days) && days > 0)) {
    throw new Error(`EXPIRES_DAYS must be a positive number, not ${JSON.stringify(expiresDays)}`);
  }
  const creds = await nodeCreds(
    { agentIssuer, accountPublicKey: account },
    peer,
    days === undefined ? {} : { expiresInMs: days * DAY_MS },
  );
  await writeFile(out, creds, { mode: 0o600 });
  process.stdout.write(`wrote ${out}\n`);
}

const [command, ...args] = process.argv.slice(2);
try {
  if (command === 'init' && args.length === 1 && args[0] !== undefined) {
    await init(args[0]);
  } else if (command === 'node' && (args.length === 3 || args.length === 4)) {
    const [dir = '', peer = '', out = '', expires] = args;
    await node(dir, peer, out, expires);
  } else {
    process.stderr.write(USAGE);
    process.exit(2);
  }
} catch (error) {
  process.stderr.write(`shoal-nats-identity: ${(error as Error).message}\n`);
  process.exit(2);
}
