import assert from 'node:assert/strict';
import { createServer, type RequestListener } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';

import {
  mayReceiveBasic,
  parseChallenge,
  parseDockerConfig,
  RealmError,
  RegistryAuth,
  RegistryReader,
  refusalAdvice,
  trustedRealmsList,
  UpstreamClient,
  type UpstreamRegistry,
} from '../src/index.js';

describe('parseDockerConfig', () => {
  it('reads auth, username/password entries and Docker Hub keys', () => {
    const config = parseDockerConfig(
      JSON.stringify({
        auths: {
          'registry.example.com:5000': { auth: Buffer.from('alice:pa:ss').toString('base64') },
          'https://index.docker.io/v1/': { auth: Buffer.from('bob:hub').toString('base64') },
          'https://ghcr.io/v2/': { username: 'carol', password: 'tok' },
          'broken.example.com': { auth: Buffer.from('no-colon').toString('base64') },
        },
      }),
    );
    assert.deepEqual(config.get('registry.example.com:5000'), {
      username: 'alice',
      password: 'pa:ss',
    });
    assert.deepEqual(config.get('docker.io'), { username: 'bob', password: 'hub' });
    assert.deepEqual(config.get('ghcr.io'), { username: 'carol', password: 'tok' });
    assert.equal(config.has('broken.example.com'), false);
  });

  it('accepts a config without auths', () => {
    assert.equal(parseDockerConfig('{}').size, 0);
  });
});

describe('parseChallenge', () => {
  it('reads the scheme and parameters of a Bearer challenge', () => {
    const { scheme, params } = parseChallenge(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
    );
    assert.equal(scheme, 'bearer');
    assert.deepEqual(params, {
      realm: 'https://auth.docker.io/token',
      service: 'registry.docker.io',
      scope: 'repository:library/alpine:pull',
    });
  });

  it('reads a Basic challenge', () => {
    assert.deepEqual(parseChallenge('Basic realm="shoal-test"'), {
      scheme: 'basic',
      params: { realm: 'shoal-test' },
    });
  });
});

describe('Basic credentials and token realms', () => {
  const registry: UpstreamRegistry = {
    host: 'registry.example.com',
    url: new URL('https://registry.example.com'),
  };

  it('go only to an HTTPS realm on the registry host, a well-known one, or a listed origin', () => {
    const may = (realm: string, trusted: string[] = []): boolean =>
      mayReceiveBasic(registry, new URL(realm), trusted);
    assert.equal(may('https://registry.example.com/token'), true);
    assert.equal(may('https://registry.example.com:8443/token'), true);
    assert.equal(may('http://registry.example.com/token'), false, 'plain http');
    assert.equal(may('https://auth.example.com/token'), false, 'another host');
    assert.equal(may('https://registry.example.com.evil.test/token'), false);
    assert.equal(may('https://auth.example.com/token', ['https://auth.example.com']), true);
    assert.equal(may('http://10.0.0.5:5001/token', ['http://10.0.0.5:5001']), true);
    assert.equal(may('http://10.0.0.5:5002/token', ['http://10.0.0.5:5001']), false);
    const hub: UpstreamRegistry = {
      host: 'docker.io',
      url: new URL('https://registry-1.docker.io'),
    };
    assert.equal(mayReceiveBasic(hub, new URL('https://auth.docker.io/token')), true);
    assert.equal(mayReceiveBasic(hub, new URL('http://auth.docker.io/token')), false);
  });

  it('parses the listed realm origins and reports bad ones', () => {
    assert.deepEqual(trustedRealmsList.parse(undefined), []);
    assert.deepEqual(
      trustedRealmsList.parse('https://auth.example.com/token, http://127.0.0.1:5001'),
      ['https://auth.example.com', 'http://127.0.0.1:5001'],
    );
    assert.equal(trustedRealmsList.safeParse('ftp://x,not a url').error?.issues.length, 2);
    assert.deepEqual(
      trustedRealmsList.parse('http://localhost:5001,http://[::1]:5001,http://127.0.0.2'),
      ['http://localhost:5001', 'http://[::1]:5001', 'http://127.0.0.2'],
      'plain http on loopback only',
    );
    assert.match(
      trustedRealmsList.safeParse('http://10.0.0.5:5001').error?.issues[0]?.message ?? '',
      /cleartext; use https/,
    );
    // The advice for a refusal names what can be done: a plain http realm off this machine
    // cannot be listed.
    const settings = { dockerConfig: 'DOCKER_CONFIG', trustedRealms: 'TRUSTED_REALMS' };
    assert.match(
      refusalAdvice(
        'registry.example.com',
        { cause: 'realm-not-trusted', realm: 'http://auth.example.com' },
        settings,
      ),
      /plain http, .*serve it over HTTPS/,
    );
    for (const realm of ['https://auth.example.com', 'http://127.0.0.1:5001']) {
      assert.match(
        refusalAdvice('registry.example.com', { cause: 'realm-not-trusted', realm }, settings),
        /list it in TRUSTED_REALMS/,
        realm,
      );
    }
  });

  it('asks a realm that may not have them for an anonymous token (a real realm server)', async () => {
    const seen: (string | undefined)[] = [];
    const realm = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ token: `t${seen.length}`, expires_in: 300 }));
    });
    await new Promise<void>((resolve) => realm.listen(0, '127.0.0.1', resolve));
    const port = (realm.address() as AddressInfo).port;
    const client = new UpstreamClient({ connectMs: 2000, headersMs: 2000, idleMs: 2000 });
    const local: UpstreamRegistry = {
      host: '127.0.0.1:5000',
      url: new URL('http://127.0.0.1:5000'),
    };
    const credentials = new Map([[local.host, { username: 'seeder', password: 'hunter2' }]]);
    const challenge = `Bearer realm="http://127.0.0.1:${port}/token",service="test"`;
    try {
      const strict = new RegistryAuth(credentials, client);
      const anonymous = await strict.answer(
        local,
        'team/app',
        challenge,
        AbortSignal.timeout(5000),
      );
      assert.equal(anonymous, 'Bearer t1');
      assert.deepEqual(seen, [undefined], 'no Basic credentials to an http realm');

      const trusting = new RegistryAuth(credentials, client, {
        trustedRealms: trustedRealmsList.parse(`http://127.0.0.1:${port}`),
      });
      const authorized = await trusting.answer(
        local,
        'team/app',
        challenge,
        AbortSignal.timeout(5000),
      );
      assert.equal(authorized, 'Bearer t2');
      assert.equal(seen[1], `Basic ${Buffer.from('seeder:hunter2').toString('base64')}`);

      // A token per repository, within the bound: pulling from ever new repositories keeps
      // the latest ones only.
      const bounded = new RegistryAuth(credentials, client, { maxTokens: 3 });
      for (let i = 0; i < 10; i += 1) {
        await bounded.answer(local, `team/app-${i}`, challenge, AbortSignal.timeout(5000));
      }
      assert.equal(bounded.tokenCount, 3);
      assert.equal(bounded.current(local, 'team/app-9'), `Bearer t${seen.length}`);
      assert.equal(
        bounded.current(local, 'team/app-6'),
        `Basic ${Buffer.from('seeder:hunter2').toString('base64')}`,
        'forgotten: the configured credentials again, until the next challenge',
      );
    } finally {
      await client.close();
      await new Promise((resolve) => realm.close(resolve));
    }
  });
});

/**
 * A token realm on loopback answering with `handler`, and a RegistryAuth (no credentials) for a
 * registry whose challenge names it; `close` stops both.
 */
async function startRealm(handler: RequestListener): Promise<{
  readonly auth: RegistryAuth;
  readonly local: UpstreamRegistry;
  readonly challenge: string;
  close(): Promise<void>;
}> {
  const realm = createServer(handler);
  await new Promise<void>((resolve) => realm.listen(0, '127.0.0.1', resolve));
  const port = (realm.address() as AddressInfo).port;
  const client = new UpstreamClient({ connectMs: 2000, headersMs: 2000, idleMs: 2000 });
  return {
    auth: new RegistryAuth(new Map(), client),
    local: { host: '127.0.0.1:5000', url: new URL('http://127.0.0.1:5000') },
    challenge: `Bearer realm="http://127.0.0.1:${port}/token",service="test"`,
    close: async () => {
      await client.close();
      await new Promise((resolve) => realm.close(resolve));
    },
  };
}

describe('RegistryAuth token responses', () => {
  it('takes a token only from a bounded JSON answer, and says what was wrong otherwise', async () => {
    let answer: { type: string; body: string } = { type: 'application/json', body: '{}' };
    const realm = await startRealm((_req, res) => {
      res.setHeader('content-type', answer.type);
      res.end(answer.body);
    });
    const { auth, local, challenge } = realm;
    const ask = (): Promise<string | undefined> =>
      auth.answer(local, 'team/app', challenge, AbortSignal.timeout(5000));
    try {
      // OAuth2's field name, and a lifetime given as a string, as some realms send it.
      answer = {
        type: 'application/json',
        body: JSON.stringify({ access_token: 'oauth-token', expires_in: '300' }),
      };
      assert.equal(await ask(), 'Bearer oauth-token');

      const bad: [string, { type: string; body: string }][] = [
        ['an HTML page of a proxy', { type: 'text/html', body: '<html>sign in</html>' }],
        ['JSON without a token', { type: 'application/json', body: '{"details":"none"}' }],
        ['a JSON string', { type: 'application/json', body: '"token"' }],
        [
          'a token that would split the header',
          { type: 'application/json', body: JSON.stringify({ token: 'a\r\nX-Injected: 1' }) },
        ],
        [
          'an answer larger than any token',
          { type: 'application/json', body: JSON.stringify({ token: 'x'.repeat(200 * 1024) }) },
        ],
      ];
      for (const [what, body] of bad) {
        answer = body;
        await assert.rejects(
          ask(),
          (error: unknown) => {
            assert.ok(error instanceof RealmError, what);
            assert.equal(error.realmStatus, 200, what);
            assert.match(error.message, /not (a )?token/, what);
            return true;
          },
          what,
        );
      }
    } finally {
      await realm.close();
    }
  });
});

describe('RegistryAuth token requests', () => {
  it('asks for each scope of a challenge apart, and reads a gzip answer only within bounds', async () => {
    const scopes: string[][] = [];
    let body: Buffer = gzipSync(JSON.stringify({ token: 'zipped', expires_in: 300 }));
    const realm = await startRealm((req, res) => {
      scopes.push(new URL(req.url ?? '/', 'http://realm').searchParams.getAll('scope'));
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(body);
    });
    const { auth, local } = realm;
    const ask = (scope: string): Promise<string | undefined> =>
      auth.answer(local, 'team/app', `${realm.challenge}${scope}`, AbortSignal.timeout(5000));
    try {
      // The distribution registry joins the scopes one request needs with a space.
      assert.equal(
        await ask(',scope="repository:team/app:pull repository:team/base:pull"'),
        'Bearer zipped',
      );
      assert.equal(await ask(''), 'Bearer zipped');
      assert.deepEqual(scopes, [
        ['repository:team/app:pull', 'repository:team/base:pull'],
        ['repository:team/app:pull'],
      ]);

      // A token shorter-lived than the spec allows is kept for half its life, not 10 s.
      // (4 s: kept 2 s, room for a loaded machine between the answer and the look.)
      body = gzipSync(JSON.stringify({ token: 'brief', expires_in: 4 }));
      assert.equal(await ask(''), 'Bearer brief');
      assert.equal(auth.current(local, 'team/app'), 'Bearer brief');
      await sleep(2_100);
      assert.equal(auth.current(local, 'team/app'), undefined, 'expired: asked for again');

      // A small gzip body that would decode to a megabyte is not a token response.
      body = gzipSync(Buffer.alloc(1024 * 1024, 0x20));
      await assert.rejects(ask(''), (error: unknown) => {
        assert.ok(error instanceof RealmError);
        assert.match(error.message, /does not decode to at most 65536 bytes/);
        return true;
      });
    } finally {
      await realm.close();
    }
  });
});

describe('RegistryReader refusals', () => {
  it('says why from the challenge it answered when the retry is refused without one', async () => {
    // A registry that challenges for a token, then refuses the (anonymous) token with a bare
    // 403, as registries do for a repository the token gives no pull access to; and its
    // token realm, on plain http, where the reader's Basic credentials may not go.
    const seen: { path: string; authorization: string | undefined }[] = [];
    let realmUrl = '';
    const server = createServer((req, res) => {
      seen.push({ path: req.url ?? '', authorization: req.headers.authorization });
      if (req.url?.startsWith('/token') === true) {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ token: 'anonymous', expires_in: 300 }));
        return;
      }
      if (req.headers.authorization === 'Bearer anonymous') {
        res.statusCode = 403;
        res.end('{"errors":[{"code":"DENIED","message":"no pull access"}]}');
        return;
      }
      res.statusCode = 401;
      res.setHeader('www-authenticate', `Bearer realm="${realmUrl}",service="test"`);
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"token wanted"}]}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    realmUrl = `http://127.0.0.1:${port}/token`;
    const client = new UpstreamClient({ connectMs: 2000, headersMs: 2000, idleMs: 2000 });
    const local: UpstreamRegistry = {
      host: `127.0.0.1:${port}`,
      url: new URL(`http://127.0.0.1:${port}`),
    };
    const credentials = new Map([[local.host, { username: 'seeder', password: 'hunter2' }]]);
    try {
      const reader = new RegistryReader(client, new RegistryAuth(credentials, client));
      const response = await reader.fetchManifest(
        local,
        'team/app',
        'latest',
        ['application/vnd.oci.image.manifest.v1+json'],
        AbortSignal.timeout(5000),
      );
      response.body.resume();
      assert.equal(response.status, 403);
      assert.equal(response.headers['www-authenticate'], undefined, 'a bare 403');
      assert.deepEqual(
        seen.map((r) => r.authorization?.split(' ')[0]),
        ['Basic', undefined, 'Bearer'],
        'Basic to the registry, nothing to the untrusted realm, its anonymous token',
      );
      assert.deepEqual(reader.refusal(local, response), {
        cause: 'realm-not-trusted',
        realm: `http://127.0.0.1:${port}`,
      });
    } finally {
      await client.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
