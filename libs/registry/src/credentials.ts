/**
 * Registry credentials from a docker config JSON file (a Kubernetes `dockerconfigjson`
 * Secret), and the registry token flow (`WWW-Authenticate: Bearer realm=...`) done with them.
 * Credentials are used only in Authorization headers and never logged.
 *
 * A registry names its token realm in its challenge, so whoever answers for the registry (or
 * sits between) could send Basic credentials anywhere. They go only to a realm over HTTPS on
 * the registry's own host name (or a well-known one: Docker Hub's auth.docker.io), or to a
 * realm origin the operator listed; any other realm is asked for an anonymous token.
 */
import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';

import { isAbortError, ShoalError } from '@shoal/runtime';
import { z } from 'zod';

import { headerValue, type UpstreamClient } from './client.js';
import type { UpstreamRegistry } from './registries.js';

export interface BasicCredentials {
  readonly username: string;
  readonly password: string;
}

/** Docker Hub's legacy key in docker config files. */
const DOCKER_HUB_KEYS = [
  'https://index.docker.io/v1/',
  'index.docker.io',
  'registry-1.docker.io',
  'https://registry-1.docker.io',
];

/** Parses `{"auths": {"host": {"auth": base64("user:pass")} | {"username","password"}}}`. */
export function parseDockerConfig(text: string): Map<string, BasicCredentials> {
  const parsed = JSON.parse(text) as {
    auths?: Record<string, { auth?: string; username?: string; password?: string }>;
  };
  const result = new Map<string, BasicCredentials>();
  for (const [key, entry] of Object.entries(parsed.auths ?? {})) {
    let username = entry.username;
    let password = entry.password;
    if (entry.auth !== undefined) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) {
        username = decoded.slice(0, colon);
        password = decoded.slice(colon + 1);
      }
    }
    if (username === undefined || password === undefined) {
      continue;
    }
    const host = DOCKER_HUB_KEYS.includes(key)
      ? 'docker.io'
      : key.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
    result.set(host, { username, password });
  }
  return result;
}

/** Reads a docker config file; a missing path means anonymous access everywhere. */
export async function loadDockerConfig(
  path: string | undefined,
): Promise<Map<string, BasicCredentials>> {
  return path === undefined ? new Map() : parseDockerConfig(await readFile(path, 'utf8'));
}

/** The parameters of a `WWW-Authenticate` challenge. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const space = header.indexOf(' ');
  const scheme = (space === -1 ? header : header.slice(0, space)).toLowerCase();
  const params: Record<string, string> = {};
  const pattern = /([a-zA-Z_]+)="([^"]*)"/g;
  for (const match of header.slice(space + 1).matchAll(pattern)) {
    const [, key, value] = match;
    if (key !== undefined && value !== undefined) {
      params[key.toLowerCase()] = value;
    }
  }
  return { scheme, params };
}

/** Realms of well-known registries on another host than the registry's. */
const WELL_KNOWN_REALMS: Record<string, readonly string[]> = {
  'docker.io': ['https://auth.docker.io'],
};

/** Whether `hostname` (as a URL gives it) names this machine: an http realm there is local. */
function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || (isIPv4(host) && host.startsWith('127.'));
}

/**
 * Parses a comma-separated list of token realm origins that may receive Basic credentials
 * besides the defaults, e.g. `https://gitlab.example.com,http://127.0.0.1:5001`. A plain
 * http realm is refused unless it is on loopback: Basic credentials would cross the network
 * in cleartext.
 */
export const trustedRealmsList = z
  .string()
  .default('')
  .transform((text, ctx): string[] => {
    const origins: string[] = [];
    for (const entry of text
      .split(',')
      .map((e) => e.trim())
      .filter((e) => e !== '')) {
      let url: URL;
      try {
        url = new URL(entry);
      } catch {
        ctx.addIssue({ code: 'custom', message: `"${entry}" is not a URL` });
        continue;
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') {
        ctx.addIssue({ code: 'custom', message: `${entry}: only http and https realms` });
        continue;
      }
      if (url.protocol === 'http:' && !isLoopback(url.hostname)) {
        ctx.addIssue({
          code: 'custom',
          message: `${entry}: a plain http realm would receive Basic credentials in cleartext; use https (http only on loopback)`,
        });
        continue;
      }
      origins.push(url.origin);
    }
    return origins;
  });

/**
 * Whether `registry`'s Basic credentials may be sent to the token realm `realm`: an HTTPS realm
 * on the registry's own host name or a well-known one for it, or an origin in `trusted`.
 */
export function mayReceiveBasic(
  registry: UpstreamRegistry,
  realm: URL,
  trusted: readonly string[] = [],
): boolean {
  if (trusted.includes(realm.origin)) {
    return true;
  }
  if (realm.protocol !== 'https:') {
    return false;
  }
  return (
    realm.hostname === registry.url.hostname ||
    (WELL_KNOWN_REALMS[registry.host] ?? []).includes(realm.origin)
  );
}

/**
 * A registry's token realm could not hand out a token: it answered 5xx or 429, or did not
 * answer. Not a refusal of the credentials: worth retrying, as any registry failure.
 */
export class RealmError extends ShoalError<'REALM_FAILED'> {
  override readonly name = 'RealmError';
  /** The realm's origin (`scheme://host[:port]`). */
  readonly realm: string;
  /** The realm's status, undefined when it did not answer. */
  readonly realmStatus: number | undefined;

  constructor(realm: string, realmStatus: number | undefined, reason: string, cause?: unknown) {
    super('REALM_FAILED', 502, `the registry's token realm ${realm} ${reason}`, { cause });
    this.realm = realm;
    this.realmStatus = realmStatus;
  }
}

/**
 * Why a registry refused a reader with its own credentials (a service's docker config), from
 * the challenge the registry refused it with: no credentials configured for its host; a
 * token realm they may not be sent to (so an anonymous token was asked for); or credentials
 * sent and refused (a wrong or expired password, or no pull access to the repository).
 */
export type AuthRefusal =
  | { readonly cause: 'no-credentials' }
  | { readonly cause: 'realm-not-trusted'; readonly realm: string }
  | { readonly cause: 'credentials-refused' };

/** The settings a service reads its registry credentials and trusted realms from. */
export interface CredentialSettings {
  /** e.g. `SHOAL_WATCHER_DOCKER_CONFIG` */
  readonly dockerConfig: string;
  /** e.g. `SHOAL_WATCHER_TRUSTED_REALMS` */
  readonly trustedRealms: string;
}

/** The operator's fix for `refusal` of `host`, naming the service's settings. */
export function refusalAdvice(
  host: string,
  refusal: AuthRefusal,
  settings: CredentialSettings,
): string {
  switch (refusal.cause) {
    case 'no-credentials':
      return `give it credentials for ${host} in ${settings.dockerConfig}`;
    case 'realm-not-trusted':
      // A plain http realm off this machine cannot be listed: the credentials would cross
      // the network in cleartext.
      return refusal.realm.startsWith('http:') && !isLoopback(new URL(refusal.realm).hostname)
        ? `its token realm ${refusal.realm} is plain http, so the credentials were not sent there (they would cross the network in cleartext): serve it over HTTPS`
        : `its token realm ${refusal.realm} is not HTTPS on ${host}, so the credentials were not sent there: list it in ${settings.trustedRealms}`;
    case 'credentials-refused':
      return `the credentials for ${host} in ${settings.dockerConfig} were refused (a wrong or expired password, or no pull access to the repository)`;
  }
}

export interface RegistryAuthOptions {
  /**
   * Realm origins (`scheme://host[:port]`) that may receive Basic credentials besides an
   * HTTPS realm on the registry's host; none by default. Parse with `trustedRealmsList`.
   */
  readonly trustedRealms?: readonly string[];
  /**
   * Most pull tokens remembered, one per (registry, repository) (default 4096): past it the
   * expired ones go, then the oldest. Without a bound a node that pulls from ever new
   * repositories would keep a token for each.
   */
  readonly maxTokens?: number;
}

/** Pull tokens remembered by default. */
const DEFAULT_MAX_TOKENS = 4096;
/**
 * Largest token response read, in bytes. A registry's JWT is a few KiB (Docker Hub's are
 * about 1.5); a larger answer is not a token response (an HTML page of a proxy in between).
 */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;

interface CachedToken {
  readonly header: string;
  readonly expiresAt: number;
}

/** Authorization for pulls from registries, per repository, with tokens cached until expiry. */
export class RegistryAuth {
  readonly #credentials: Map<string, BasicCredentials>;
  readonly #client: UpstreamClient;
  readonly #tokens = new Map<string, CachedToken>();
  readonly #trustedRealms: readonly string[];
  readonly #maxTokens: number;

  constructor(
    credentials: Map<string, BasicCredentials>,
    client: UpstreamClient,
    options: RegistryAuthOptions = {},
  ) {
    this.#credentials = credentials;
    this.#client = client;
    this.#trustedRealms = options.trustedRealms ?? [];
    this.#maxTokens = Math.max(1, options.maxTokens ?? DEFAULT_MAX_TOKENS);
  }

  /** Pull tokens remembered. */
  get tokenCount(): number {
    return this.#tokens.size;
  }

  /** The Authorization header to try first: a cached token, else Basic credentials, else none. */
  current(registry: UpstreamRegistry, repository: string): string | undefined {
    const token = this.#tokens.get(`${registry.host}/${repository}`);
    if (token !== undefined && token.expiresAt > Date.now()) {
      return token.header;
    }
    return this.#basic(registry);
  }

  /**
   * Why the registry refused this reader, given the challenge of its refusal (undefined: a
   * 403, or none sent). See `AuthRefusal`.
   */
  refusal(registry: UpstreamRegistry, challenge: string | undefined): AuthRefusal {
    if (this.#credentials.get(registry.host) === undefined) {
      return { cause: 'no-credentials' };
    }
    const { scheme, params } = parseChallenge(challenge ?? '');
    if (scheme === 'bearer' && params.realm !== undefined) {
      try {
        const realm = new URL(params.realm);
        if (!mayReceiveBasic(registry, realm, this.#trustedRealms)) {
          return { cause: 'realm-not-trusted', realm: realm.origin };
        }
      } catch {
        // Not a URL: no token could be asked for, with or without credentials.
      }
    }
    return { cause: 'credentials-refused' };
  }

  /**
   * Answers a 401 challenge: for Bearer, fetches a pull token from the realm (with Basic
   * credentials when configured and the realm may have them, see `mayReceiveBasic`; an
   * anonymous token otherwise); for Basic, the configured credentials. Undefined when the
   * challenge cannot be met (`refusal` says why). Throws a `RealmError` when the realm
   * answers 5xx or 429, or does not answer: a failure to retry, not a refusal.
   */
  async answer(
    registry: UpstreamRegistry,
    repository: string,
    challenge: string,
    signal: AbortSignal,
  ): Promise<string | undefined> {
    const { scheme, params } = parseChallenge(challenge);
    if (scheme === 'basic') {
      return this.#basic(registry);
    }
    if (scheme !== 'bearer' || params.realm === undefined) {
      return undefined;
    }
    let realm: URL;
    try {
      realm = new URL(params.realm);
    } catch {
      return undefined;
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      return undefined;
    }
    if (params.service !== undefined) {
      realm.searchParams.set('service', params.service);
    }
    // A challenge names several scopes separated by spaces (the distribution registry's, when
    // one request needs more than one repository); the token spec asks for one `scope`
    // parameter each, and a realm that reads only one would grant only the first.
    realm.searchParams.delete('scope');
    for (const scope of (params.scope ?? `repository:${repository}:pull`).split(' ')) {
      if (scope !== '') {
        realm.searchParams.append('scope', scope);
      }
    }
    const basic = mayReceiveBasic(registry, realm, this.#trustedRealms)
      ? this.#basic(registry)
      : undefined;
    const chunks: Buffer[] = [];
    let status: number;
    let tooLarge = false;
    let encoding: string | undefined;
    try {
      const response = await this.#client.request({
        registry: { host: realm.host, url: new URL(realm.origin) },
        method: 'GET',
        path: `${realm.pathname}${realm.search}`,
        headers: { authorization: basic },
        signal,
      });
      status = response.status;
      encoding = headerValue(response.headers, 'content-encoding');
      let read = 0;
      for await (const chunk of response.body as AsyncIterable<Buffer>) {
        read += chunk.length;
        if (read > MAX_TOKEN_RESPONSE_BYTES) {
          tooLarge = true;
          break;
        }
        chunks.push(chunk);
      }
    } catch (error) {
      if (signal.aborted || isAbortError(error)) {
        throw error;
      }
      const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new RealmError(realm.origin, undefined, `did not answer (${reason})`, error);
    }
    if (status >= 500 || status === 429) {
      throw new RealmError(realm.origin, status, `answered ${status}`);
    }
    if (status !== 200) {
      return undefined;
    }
    if (tooLarge) {
      throw new RealmError(
        realm.origin,
        status,
        `answered more than ${MAX_TOKEN_RESPONSE_BYTES} bytes: not a token response`,
      );
    }
    const raw = decoded(Buffer.concat(chunks), encoding);
    if (raw === undefined) {
      throw new RealmError(
        realm.origin,
        status,
        `answered a ${encoding ?? 'gzip'} body that does not decode to at most ${MAX_TOKEN_RESPONSE_BYTES} bytes`,
      );
    }
    const body = tokenResponse(raw);
    if (body === undefined) {
      throw new RealmError(realm.origin, status, 'answered 200 without a token (not token JSON)');
    }
    const header = `Bearer ${body.token}`;
    // Renew a little before the registry's deadline (default 60 s per the token spec); a
    // token shorter-lived than the spec allows (under 20 s) is kept for half its life, not
    // past it: each read would otherwise carry a dead token and cost a 401 first.
    const expiresInS = body.expiresInS ?? 60;
    const lifetimeMs = (expiresInS > 20 ? expiresInS - 10 : expiresInS / 2) * 1000;
    this.#remember(`${registry.host}/${repository}`, {
      header,
      expiresAt: Date.now() + lifetimeMs,
    });
    return header;
  }

  /** Keeps `token` under `key` as the newest, within `maxTokens`. */
  #remember(key: string, token: CachedToken): void {
    this.#tokens.delete(key);
    if (this.#tokens.size >= this.#maxTokens) {
      const now = Date.now();
      for (const [known, cached] of this.#tokens) {
        if (cached.expiresAt <= now) {
          this.#tokens.delete(known);
        }
      }
      // None expired: the oldest goes (a Map iterates in insertion order).
      for (const [oldest] of this.#tokens) {
        if (this.#tokens.size < this.#maxTokens) {
          break;
        }
        this.#tokens.delete(oldest);
      }
    }
    this.#tokens.set(key, token);
  }

  #basic(registry: UpstreamRegistry): string | undefined {
    const credentials = this.#credentials.get(registry.host);
    return credentials === undefined
      ? undefined
      : `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
  }
}

/**
 * A realm's answer decoded: some realms behind a compressing proxy or CDN gzip it although it
 * was not asked for (or, stripped of its Content-Encoding, still start with gzip's magic
 * bytes). Undefined when it does not decode within `MAX_TOKEN_RESPONSE_BYTES`.
 */
function decoded(raw: Buffer, encoding: string | undefined): Buffer | undefined {
  const coding = encoding?.trim().toLowerCase();
  const options = { maxOutputLength: MAX_TOKEN_RESPONSE_BYTES };
  try {
    if (coding === 'gzip' || coding === 'x-gzip' || (raw[0] === 0x1f && raw[1] === 0x8b)) {
      return gunzipSync(raw, options);
    }
    if (coding === 'deflate') {
      return inflateSync(raw, options);
    }
    if (coding === 'br') {
      return brotliDecompressSync(raw, options);
    }
  } catch (error) {
    // Larger than allowed once decoded: refused. Anything else that does not decode (a proxy
    // that decompressed the body and left the header) is read as it came.
    return error instanceof RangeError ||
      (error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE'
      ? undefined
      : raw;
  }
  return raw;
}

/**
 * The token of a realm's 200 answer (`token`, or OAuth2's `access_token`) and its lifetime in
 * seconds if it says one; undefined when the body is not such JSON. The token must be a
 * header-safe string: it goes into an Authorization header as it is.
 */
function tokenResponse(raw: Buffer): { token: string; expiresInS?: number } | undefined {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) {
    return undefined;
  }
  const {
    token,
    access_token: accessToken,
    expires_in: expiresIn,
  } = body as Record<string, unknown>;
  const found = typeof token === 'string' && token !== '' ? token : accessToken;
  if (typeof found !== 'string' || !/^[\x21-\x7e]+$/.test(found)) {
    return undefined;
  }
  const seconds = typeof expiresIn === 'number' ? expiresIn : Number(expiresIn);
  return Number.isFinite(seconds) && seconds > 0
    ? { token: found, expiresInS: seconds }
    : { token: found };
}
