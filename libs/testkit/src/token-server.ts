/**
 * A registry token server for tests (the distribution token spec): users with a password and
 * the repositories each may pull (and push), tokens as RS256 JWTs whose `x5c` carries a
 * self-signed certificate the registry trusts through its `rootcertbundle`. Repository-scoped
 * access, as Docker Hub, Harbor or GitLab grant it, which htpasswd cannot express.
 */
import { createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

import { makeTempDir } from './process.js';
import { writeSelfSigned } from './tls.js';

export interface TokenUser {
  readonly password: string;
  /** Repositories this user may pull from; `*` for all. */
  readonly pull: readonly string[];
  /** Repositories this user may push to; `*` for all. */
  readonly push?: readonly string[];
}

export interface TokenServer {
  /** `http://127.0.0.1:<port>/token`: the registry's `realm`. */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM file of the signing certificate: the registry's `rootcertbundle`. */
  readonly rootCertBundle: string;
  /** Token requests served so far: user (or `anonymous`) and the scopes asked. */
  readonly requests: { user: string; scopes: string[] }[];
  /** A token for `user`, granting what it may of `scopes`, as the realm would hand it out. */
  issue(user: string | undefined, scopes: readonly string[]): string;
  stop(): Promise<void>;
}

const SERVICE = 'shoal-test-registry';
const ISSUER = 'shoal-test-token-issuer';

export interface TokenServerOptions {
  /** Repositories anyone may pull from without credentials (public ones); none by default. */
  readonly anonymousPull?: readonly string[];
  /** How long a token is valid, in seconds (default 300). */
  readonly tokenTtlS?: number;
  /**
   * Token answers are gzip'd with `Content-Encoding: gzip` whether or not the client asked for
   * it, as some realms behind a compressing proxy or CDN answer (default false).
   */
  readonly gzip?: boolean;
}

export async function startTokenServer(
  users: Record<string, TokenUser>,
  options: TokenServerOptions = {},
): Promise<TokenServer> {
  const anonymous: TokenUser = { password: '', pull: options.anonymousPull ?? [] };
  const ttlS = options.tokenTtlS ?? 300;
  const dir = await makeTempDir('token');
  const keyPath = join(dir.path, 'key.pem');
  const certPath = join(dir.path, 'cert.pem');
  await writeSelfSigned({
    keyArgs: ['-newkey', 'rsa:2048', '-nodes'],
    keyFile: keyPath,
    certFile: certPath,
    name: 'shoal-test-token',
    keyUsage: 'digitalSignature,keyCertSign',
  });
  const key: KeyObject = createPrivateKey(await readFile(keyPath, 'utf8'));
  const certificate = new X509Certificate(await readFile(certPath, 'utf8'));
  const x5c = certificate.raw.toString('base64');
  const requests: { user: string; scopes: string[] }[] = [];

  const issue = (user: string | undefined, scopes: readonly string[]): string => {
    const allowed = user === undefined ? anonymous : users[user];
    const access = scopes.flatMap((scope) => {
      const [type, name, actions] = scope.split(':');
      if (type !== 'repository' || name === undefined || actions === undefined) {
        return [];
      }
      const may = (list: readonly string[] | undefined): boolean =>
        list !== undefined && (list.includes('*') || list.includes(name));
      const granted = actions
        .split(',')
        .filter(
          (a) => (a === 'pull' && may(allowed?.pull)) || (a === 'push' && may(allowed?.push)),
        );
      return granted.length === 0 ? [] : [{ type, name, actions: granted }];
    });
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [x5c] };
    const claims = {
      iss: ISSUER,
      sub: user ?? '',
      aud: SERVICE,
      exp: now + ttlS,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const signed = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    return `${signed}.${base64url(sign('sha256', Buffer.from(signed), key))}`;
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://token');
    if (req.method !== 'GET' || url.pathname !== '/token') {
      // containerd tries the OAuth POST first and falls back to GET on a 404.
      res.writeHead(404).end();
      return;
    }
    let user: string | undefined;
    const header = req.headers.authorization;
    if (header !== undefined) {
      const [scheme, encoded = ''] = header.split(' ');
      const decoded = Buffer.from(encoded, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      const name = decoded.slice(0, colon);
      if (scheme?.toLowerCase() !== 'basic' || users[name]?.password !== decoded.slice(colon + 1)) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ details: 'wrong credentials' }));
        return;
      }
      user = name;
    }
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' '));
    requests.push({ user: user ?? 'anonymous', scopes });
    const token = issue(user, scopes);
    const body = Buffer.from(
      JSON.stringify({
        token,
        access_token: token,
        expires_in: ttlS,
        issued_at: new Date().toISOString(),
      }),
    );
    if (options.gzip === true) {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(gzipSync(body));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body);
  };

  const server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service: SERVICE,
    issuer: ISSUER,
    rootCertBundle: certPath,
    requests,
    issue,
    stop: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await dir.remove();
    },
  };
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}
