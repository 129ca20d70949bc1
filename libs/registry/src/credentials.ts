/**
 * Registry credentials from a docker config JSON file (a Kubernetes `dockerconfigjson`
 * Secret), and the registry token flow (`WWW-Authenticate: Bearer realm=...`) done with them.
 * Credentials are used only in Authorization headers and never logged.
 */
import { readFile } from 'node:fs/promises';

import type { UpstreamClient } from './client.js';
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

interface CachedToken {
  readonly header: string;
  readonly expiresAt: number;
}

/** Authorization for pulls from registries, per repository, with tokens cached until expiry. */
export class RegistryAuth {
  readonly #credentials: Map<string, BasicCredentials>;
  readonly #client: UpstreamClient;
  readonly #tokens = new Map<string, CachedToken>();

  constructor(credentials: Map<string, BasicCredentials>, client: UpstreamClient) {
    this.#credentials = credentials;
    this.#client = client;
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
   * Answers a 401 challenge: for Bearer, fetches a pull token from the realm (with Basic
   * credentials when configured); for Basic, the configured credentials. Undefined when the
   * challenge cannot be met.
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
    const realm = new URL(params.realm);
    if (params.service !== undefined) {
      realm.searchParams.set('service', params.service);
    }
    realm.searchParams.set('scope', params.scope ?? `repository:${repository}:pull`);
    const basic = this.#basic(registry);
    const response = await this.#client.request({
      registry: { host: realm.host, url: new URL(realm.origin) },
      method: 'GET',
      path: `${realm.pathname}${realm.search}`,
      headers: { authorization: basic },
      signal,
    });
    const chunks: Buffer[] = [];
    for await (const chunk of response.body as AsyncIterable<Buffer>) {
      chunks.push(chunk);
    }
    if (response.status !== 200) {
      return undefined;
    }
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
      token?: string;
      access_token?: string;
      expires_in?: number;
    };
    const token = body.token ?? body.access_token;
    if (token === undefined) {
      return undefined;
    }
    const header = `Bearer ${token}`;
    // Renew a little before the registry's deadline (default 60 s per the token spec).
    const lifetimeMs = Math.max(10, (body.expires_in ?? 60) - 10) * 1000;
    this.#tokens.set(`${registry.host}/${repository}`, {
      header,
      expiresAt: Date.now() + lifetimeMs,
    });
    return header;
  }

  #basic(registry: UpstreamRegistry): string | undefined {
    const credentials = this.#credentials.get(registry.host);
    return credentials === undefined
      ? undefined
      : `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
  }
}
