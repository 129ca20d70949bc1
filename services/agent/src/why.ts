#!/usr/bin/env node
/**
 * `shoal-why IMAGE`: how did this image's bytes arrive on this node? Resolves the image through
 * the node's agent (as containerd would), then asks the agent, blob by blob, where the bytes
 * came from: peers (and which), the seed server, the origin registry or the cache.
 *
 *   shoal-why REGISTRY/REPOSITORY[:TAG|@DIGEST] [--mirror URL] [--platform OS/ARCH] [--user USER:PASSWORD] [--json]
 *
 * The mirror is `--mirror`, else `http://` + SHOAL_AGENT_LISTEN, else http://127.0.0.1:65001.
 * Exit status: 0 answered, 1 the image could not be resolved, 2 a usage error.
 */
import { parseArgs } from 'node:util';

import type { BlobRecord } from './provenance/ledger.js';

const usage =
  'usage: shoal-why REGISTRY/REPOSITORY[:TAG|@DIGEST] [--mirror URL] [--platform OS/ARCH] [--user USER:PASSWORD] [--json]';
const TIMEOUT_MS = 30_000;
const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

class UsageError extends Error {}
class ResolveError extends Error {}

interface Descriptor {
  readonly digest: string;
  readonly size: number;
  readonly mediaType?: string;
  readonly platform?: { readonly os?: string; readonly architecture?: string };
}
interface Manifest {
  readonly manifests?: Descriptor[];
  readonly config?: Descriptor;
  readonly layers?: Descriptor[];
}

interface Row {
  readonly role: string;
  readonly digest: string;
  readonly size: number;
  readonly record: BlobRecord | undefined;
}

function parseImage(text: string): { registry: string; repository: string; ref: string } {
  const match =
    /^([^/]+)\/([^@:]+(?:\/[^@:]+)*)(?::([\w][\w.-]{0,127}))?(?:@(sha256:[a-f0-9]{64}))?$/.exec(
      text,
    );
  if (match?.[1] === undefined || match[2] === undefined) {
    throw new UsageError(`"${text}" is not REGISTRY/REPOSITORY[:TAG|@DIGEST]`);
  }
  return { registry: match[1], repository: match[2], ref: match[4] ?? match[3] ?? 'latest' };
}

async function manifest(
  mirror: string,
  image: { registry: string; repository: string },
  ref: string,
  authorization: string | undefined,
): Promise<Manifest> {
  const url = `${mirror}/v2/${image.repository}/manifests/${ref}?ns=${encodeURIComponent(image.registry)}`;
  const response = await fetch(url, {
    headers: { accept: ACCEPT, ...(authorization === undefined ? {} : { authorization }) },
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  if (response.status === 401) {
    throw new ResolveError(`the registry wants credentials for ${image.repository}: use --user`);
  }
  if (response.status !== 200) {
    throw new ResolveError(
      `the mirror answered ${String(response.status)} for ${image.repository}:${ref}`,
    );
  }
  return (await response.json()) as Manifest;
}

async function record(mirror: string, digest: string): Promise<BlobRecord | undefined> {
  const response = await fetch(`${mirror}/shoal/v1/blobs/${digest}`, {
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  if (response.status === 404) {
    await response.arrayBuffer();
    return undefined;
  }
  if (response.status !== 200) {
    throw new ResolveError(`the agent answered ${String(response.status)} about ${digest}`);
  }
  return (await response.json()) as BlobRecord;
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function table(image: string, rows: readonly Row[]): string {
  const header = ['blob', 'size', 'peers', 'seed', 'origin', 'cache', 'from', 'time'];
  const lines: string[][] = [header];
  const total = { peer: 0, seed: 0, origin: 0, cache: 0 };
  for (const row of rows) {
    const r = row.record;
    if (r !== undefined) {
      total.peer += r.bytes.peer;
      total.seed += r.bytes.seed;
      total.origin += r.bytes.origin;
      total.cache += r.bytes.cache;
    }
    lines.push([
      `${row.role} ${row.digest.slice(7, 19)}`,
      mib(row.size),
      r === undefined ? '-' : mib(r.bytes.peer),
      r === undefined ? '-' : mib(r.bytes.seed),
      r === undefined ? '-' : mib(r.bytes.origin),
      r === undefined ? '-' : mib(r.bytes.cache),
      r === undefined
        ? 'not pulled through this agent since it started'
        : r.peers.length === 0
          ? r.outcome
          : `${r.outcome}; peers ${r.peers.join(', ')}`,
      r === undefined ? '' : `${(r.durationMs / 1000).toFixed(2)} s`,
    ]);
  }
  const widths = header.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  const text = lines.map((l) =>
    l
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd(),
  );
  text.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  const sum = total.peer + total.seed + total.origin + total.cache;
  const share = (n: number): string => (sum === 0 ? '0%' : `${Math.round((100 * n) / sum)}%`);
  text.push(
    '',
    `${image}: ${mib(sum)} recorded; peers ${share(total.peer)}, seed ${share(total.seed)}, ` +
      `origin ${share(total.origin)}, cache ${share(total.cache)}`,
  );
  return `${text.join('\n')}\n`;
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        mirror: { type: 'string' },
        platform: { type: 'string' },
        user: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help === true) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] === undefined) {
    throw new UsageError('name one image');
  }
  const image = parseImage(positionals[0]);
  const listen = process.env.SHOAL_AGENT_LISTEN?.replace(/^0\.0\.0\.0:/, '127.0.0.1:');
  const mirror = (
    values.mirror ?? (listen === undefined ? 'http://127.0.0.1:65001' : `http://${listen}`)
  ).replace(/\/+$/, '');
  const authorization =
    values.user === undefined ? undefined : `Basic ${Buffer.from(values.user).toString('base64')}`;
  const [os = 'linux', architecture = 'amd64'] = (values.platform ?? 'linux/amd64').split('/');
  let top = await manifest(mirror, image, image.ref, authorization);
  if (top.manifests !== undefined) {
    const chosen = top.manifests.find(
      (m) => m.platform?.os === os && m.platform.architecture === architecture,
    );
    if (chosen === undefined) {
      throw new ResolveError(`the image index has no ${os}/${architecture} manifest`);
    }
    top = await manifest(mirror, image, chosen.digest, authorization);
  }
  const blobs: { role: string; descriptor: Descriptor }[] = [
    ...(top.config === undefined ? [] : [{ role: 'config', descriptor: top.config }]),
    ...(top.layers ?? []).map((descriptor) => ({ role: 'layer', descriptor })),
  ];
  const rows: Row[] = [];
  for (const { role, descriptor } of blobs) {
    rows.push({
      role,
      digest: descriptor.digest,
      size: descriptor.size,
      record: await record(mirror, descriptor.digest),
    });
  }
  process.stdout.write(
    values.json === true ? `${JSON.stringify(rows, null, 2)}\n` : table(positionals[0], rows),
  );
  return 0;
}

try {
  process.exit(await main());
} catch (error) {
  process.stderr.write(`shoal-why: ${(error as Error).message}\n`);
  if (error instanceof UsageError) {
    process.stderr.write(`${usage}\n`);
    process.exit(2);
  }
  process.exit(1);
}
