#!/usr/bin/env node
/**
 * `shoal-why IMAGE`: how did this image's bytes arrive on this node? Resolves the image through
 * the node's agent (as containerd would), then asks the agent, blob by blob, where the bytes
 * came from: peers (and which), the seed server, the origin registry or the cache.
 *
 *   shoal-why REGISTRY/REPOSITORY[:TAG|@DIGEST] [--mirror URL] [--platform OS/ARCH] [--user USER:PASSWORD] [--trust-realm URL,...] [--json]
 *
 * The mirror is `--mirror`, else `http://` + SHOAL_AGENT_LISTEN, else http://127.0.0.1:65001.
 * With `--user`, a registry's token challenge (passed back by the mirror) is answered as the
 * seed server answers it: the password goes only to an HTTPS realm on the registry's host name,
 * or to one listed with `--trust-realm`. Every error is one line on stderr; the exit codes are
 * in `usage` (and the README).
 */
import {
  RealmError,
  RegistryAuth,
  trustedRealmsList,
  UpstreamClient,
  type UpstreamRegistry,
} from '@shoal/registry';
import { CliError, parseCliArgs, runCli, unreachableReason, USAGE_EXIT } from '@shoal/runtime/cli';

import type { BlobRecord } from './provenance/ledger.js';

const TOOL = 'shoal-why';
/** Exit codes, as `--help` and the README list them. */
const EXIT = { ok: 0, unresolved: 1, usage: USAGE_EXIT, unreachable: 3, internal: 70 } as const;
const usage = `usage: shoal-why REGISTRY/REPOSITORY[:TAG|@DIGEST] [--mirror URL] [--platform OS/ARCH] [--user USER:PASSWORD] [--trust-realm URL,...] [--json]
exit codes:
  0  answered (blobs never pulled through this agent are listed as such)
  1  the image could not be resolved through the mirror (unknown, credentials wanted, no such platform)
  2  usage error: unknown option, bad or missing argument
  3  the mirror could not be reached (is the agent running? --mirror)
  70 an unexpected error (a bug: please report the line it printed)`;
const TIMEOUT_MS = 30_000;
const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

const usageError = (message: string): CliError => new CliError(message, EXIT.usage);
const resolveError = (message: string): CliError => new CliError(message, EXIT.unresolved);

/** fetch, with "the mirror cannot be reached" as the one line when there is no answer. */
async function ask(mirror: string, url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (error) {
    throw new CliError(
      `cannot reach the mirror at ${mirror}: ${unreachableReason(error)}`,
      EXIT.unreachable,
    );
  }
}

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
    throw usageError(`"${text}" is not REGISTRY/REPOSITORY[:TAG|@DIGEST]`);
  }
  return { registry: match[1], repository: match[2], ref: match[4] ?? match[3] ?? 'latest' };
}

/**
 * The credentials manifests are asked with: the user's, as Basic at first; once the registry
 * challenged for a token, the token its realm gave for them.
 */
interface Session {
  /** What answers the registry's challenges; undefined without `--user`. */
  readonly auth: RegistryAuth | undefined;
  readonly registry: UpstreamRegistry;
  authorization: string | undefined;
}

async function manifest(
  mirror: string,
  image: { registry: string; repository: string },
  ref: string,
  session: Session,
): Promise<Manifest> {
  const url = `${mirror}/v2/${image.repository}/manifests/${ref}?ns=${encodeURIComponent(image.registry)}`;
  const get = (): Promise<Response> =>
    ask(mirror, url, {
      headers: {
        accept: ACCEPT,
        ...(session.authorization === undefined ? {} : { authorization: session.authorization }),
      },
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  let response = await get();
  const challenge = response.headers.get('www-authenticate');
  if (response.status === 401 && session.auth !== undefined && challenge !== null) {
    await response.arrayBuffer();
    const answer = await session.auth
      .answer(session.registry, image.repository, challenge, AbortSignal.timeout(TIMEOUT_MS))
      .catch((error: unknown) => {
        throw resolveError(
          error instanceof RealmError
            ? error.message
            : `the registry's token realm: ${unreachableReason(error)}`,
        );
      });
    if (answer !== undefined && answer !== session.authorization) {
      session.authorization = answer;
      response = await get();
    }
  }
  if (response.status === 401) {
    throw resolveError(refusedMessage(session, image.repository, response));
  }
  if (response.status !== 200) {
    throw resolveError(
      `the mirror answered ${String(response.status)} for ${image.repository}:${ref}`,
    );
  }
  return (await response.json()) as Manifest;
}

/**
 * The agent's record of how `digest` arrived; undefined when it has none, or will not tell
 * this client (it answers only a client the registry would serve the blob).
 */
async function record(
  mirror: string,
  digest: string,
  authorization: string | undefined,
): Promise<BlobRecord | undefined> {
  const response = await ask(mirror, `${mirror}/shoal/v1/blobs/${digest}`, {
    headers: authorization === undefined ? {} : { authorization },
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  if (response.status === 404) {
    await response.arrayBuffer();
    return undefined;
  }
  if (response.status !== 200) {
    throw resolveError(`the agent answered ${String(response.status)} about ${digest}`);
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
  const { values, positionals } = parseCliArgs(TOOL, {
    options: {
      mirror: { type: 'string' },
      platform: { type: 'string' },
      user: { type: 'string' },
      'trust-realm': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
  });
  if (values.help === true) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] === undefined) {
    throw usageError('name one image, REGISTRY/REPOSITORY[:TAG|@DIGEST] (shoal-why --help)');
  }
  const image = parseImage(positionals[0]);
  const listen = process.env.SHOAL_AGENT_LISTEN?.replace(/^0\.0\.0\.0:/, '127.0.0.1:');
  const mirror = (
    values.mirror ?? (listen === undefined ? 'http://127.0.0.1:65001' : `http://${listen}`)
  ).replace(/\/+$/, '');
  const session = startSession(image.registry, values.user, values['trust-realm']);
  try {
    return await report(mirror, image, positionals[0], session, values);
  } finally {
    session.close();
  }
}

/** The session for `--user` (USER:PASSWORD) and `--trust-realm`; `close` ends its connections. */
function startSession(
  host: string,
  user: string | undefined,
  trustRealm: string | undefined,
): Session & { close(): void } {
  // The mirror speaks to the registry; only a token realm is reached directly.
  const registry: UpstreamRegistry = { host, url: new URL(`https://${host}`) };
  if (user === undefined) {
    if (trustRealm !== undefined) {
      throw usageError('--trust-realm needs --user');
    }
    return { auth: undefined, registry, authorization: undefined, close: () => undefined };
  }
  const colon = user.indexOf(':');
  if (colon <= 0) {
    throw usageError('--user takes USER:PASSWORD');
  }
  const realms = trustedRealmsList.safeParse(trustRealm ?? '');
  if (!realms.success) {
    throw usageError(`--trust-realm: ${realms.error.issues.map((i) => i.message).join('; ')}`);
  }
  const client = new UpstreamClient(
    { connectMs: 10_000, headersMs: TIMEOUT_MS, idleMs: TIMEOUT_MS },
    'shoal-why/0.1',
  );
  const credentials = { username: user.slice(0, colon), password: user.slice(colon + 1) };
  return {
    auth: new RegistryAuth(new Map([[host, credentials]]), client, {
      trustedRealms: realms.data,
      maxTokens: 4,
    }),
    registry,
    authorization: `Basic ${Buffer.from(user).toString('base64')}`,
    close: () => void client.close(),
  };
}

/**
 * Why the registry refused: no `--user`; a token realm `--user` was not sent to (only then
 * is `--trust-realm` the fix); or the credentials themselves (Basic, or a trusted realm).
 */
function refusedMessage(session: Session, repository: string, response: Response): string {
  if (session.auth === undefined) {
    return `the registry wants credentials for ${repository}: use --user`;
  }
  const refusal = session.auth.refusal(
    session.registry,
    response.headers.get('www-authenticate') ?? undefined,
  );
  return refusal.cause === 'realm-not-trusted'
    ? `the registry's token realm ${refusal.realm} is not HTTPS on ${session.registry.host}, so --user was not sent there: name it with --trust-realm`
    : `the registry refused the credentials for ${repository} (a wrong password, or no pull access)`;
}

/** Resolves the image through the mirror and prints where each blob's bytes came from. */
async function report(
  mirror: string,
  image: ReturnType<typeof parseImage>,
  name: string,
  session: Session,
  values: { platform?: string | undefined; json?: boolean | undefined },
): Promise<number> {
  const [os = 'linux', architecture = 'amd64'] = (values.platform ?? 'linux/amd64').split('/');
  let top = await manifest(mirror, image, image.ref, session);
  if (top.manifests !== undefined) {
    const chosen = top.manifests.find(
      (m) => m.platform?.os === os && m.platform.architecture === architecture,
    );
    if (chosen === undefined) {
      throw resolveError(`the image index has no ${os}/${architecture} manifest`);
    }
    top = await manifest(mirror, image, chosen.digest, session);
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
      record: await record(mirror, descriptor.digest, session.authorization),
    });
  }
  process.stdout.write(
    values.json === true ? `${JSON.stringify(rows, null, 2)}\n` : table(name, rows),
  );
  return 0;
}

await runCli(TOOL, main, EXIT.internal);
