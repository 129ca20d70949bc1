/**
 * Private images through the agent with clients that check the API version first (skopeo, as
 * docker and crane do): they send credentials only after a `401` challenge on `/v2/`, so the
 * agent passes the registry's own challenge back there. A registry behind a token server where
 * alice may pull `team/a` and anyone `public/base`, both holding the same layers: a layer alice
 * pulled is served under `public/base` to anyone the registry lets read it, and under `team/a`
 * to no one else.
 */
import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  skopeoCopy,
  startAgent,
  startRegistry,
  startTokenServer,
  serviceMain,
  Teardown,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
  type TokenServer,
} from '@shoal/testkit';

import { runTool } from '../src/cli.js';
import { MiB } from '../src/files.js';
import { ociCode, streamDigest } from '../src/http.js';

const WHY = serviceMain('agent').replace(/main\.js$/, 'why.js');

const users = {
  admin: { password: 'admin-pw', pull: ['*'], push: ['*'] },
  alice: { password: 'alice-pw', pull: ['team/a'] },
};

describe('private images through the agent with clients that log in at /v2/', () => {
  const teardown = new Teardown();
  let tokens: TokenServer;
  let registry: Registry;
  let agent: AgentProcess;
  let image: GeneratedImage;
  let dir: string;

  /** `host:port` of the agent, as an image reference names a registry. */
  const agentHost = (): string => new URL(agent.url).host;
  const bearer = (user: string | undefined, repository: string): string =>
    `Bearer ${tokens.issue(user, [`repository:${repository}:pull`])}`;
  /** Whether an OCI layout holds every blob of the image. */
  const holdsImage = async (layout: string): Promise<boolean> => {
    for (const digest of [image.manifest.digest, ...image.blobs.map((b) => b.digest)]) {
      const [algorithm = '', hex = ''] = digest.split(':');
      try {
        await access(join(layout, 'blobs', algorithm, hex));
      } catch {
        return false;
      }
    }
    return true;
  };

  before(async () => {
    tokens = await startTokenServer(users, { anonymousPull: ['public/base'] });
    teardown.add('tokens', () => tokens.stop());
    registry = await startRegistry({ tokenAuth: tokens });
    teardown.add('registry', () => registry.stop());
    const temp = await makeTempDir('private-clients');
    teardown.add('dir', () => temp.remove());
    dir = temp.path;
    image = await generateImage(join(dir, 'image'), {
      layerSizes: [2 * MiB, 1 * MiB],
      seed: 'private-clients',
    });
    const admin = `admin:${users.admin.password}`;
    await pushImage(image, registry.host, 'team/a', { destCreds: admin });
    await pushImage(image, registry.host, 'public/base', { destCreds: admin });
    agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
    });
    teardown.add('agent', () => agent.stop());
  });

  after(async () => {
    await teardown.run();
  });

  it("answers /v2/ with the registry's challenge until the client has a credential", async () => {
    for (const method of ['GET', 'HEAD'] as const) {
      for (const query of ['', `?ns=${registry.host}`]) {
        const response = await fetch(`${agent.url}/v2/${query}`, { method });
        const body = Buffer.from(await response.arrayBuffer());
        assert.equal(response.status, 401, `${method} /v2/${query}`);
        assert.equal(
          response.headers.get('www-authenticate'),
          `Bearer realm="${tokens.realm}",service="${tokens.service}"`,
        );
        assert.equal(response.headers.get('docker-distribution-api-version'), 'registry/2.0');
        if (method === 'GET') {
          assert.equal(ociCode(body), 'UNAUTHORIZED');
        }
      }
    }
    const allowed = await fetch(`${agent.url}/v2/`, {
      headers: { authorization: bearer('alice', 'team/a') },
    });
    assert.equal(allowed.status, 200);
    assert.deepEqual(await allowed.json(), {});
    assert.equal(allowed.headers.get('docker-distribution-api-version'), 'registry/2.0');
    // A registry the agent does not mirror is never asked: the mirror answers for itself.
    const mark = (await registry.requests()).length;
    const unknown = await fetch(`${agent.url}/v2/?ns=elsewhere.example.com`);
    assert.equal(unknown.status, 200);
    assert.equal((await registry.requests()).length, mark);
  });

  it('lets skopeo with credentials copy a private image, and nobody without', async () => {
    const ref = `docker://${agentHost()}/team/a:${image.tag}`;
    await assert.rejects(
      skopeoCopy(ref, `oci:${join(dir, 'anonymous')}:x`, { timeoutMs: 60_000 }),
      /unauthorized|authentication required/i,
      'anonymous',
    );
    await assert.rejects(
      skopeoCopy(ref, `oci:${join(dir, 'wrong')}:x`, {
        srcCreds: 'alice:not-her-password',
        timeoutMs: 60_000,
      }),
      /unauthorized|authentication required|401/i,
      'wrong password',
    );
    assert.equal(await agent.metric('shoal_agent_served_bytes_total'), 0, 'not a byte served');

    const mark = (await registry.requests()).length;
    const out = join(dir, 'alice');
    await skopeoCopy(ref, `oci:${out}:x`, {
      srcCreds: `alice:${users.alice.password}`,
      timeoutMs: 120_000,
    });
    assert.ok(await holdsImage(out), 'skopeo wrote every blob (it checks their digests)');
    const traffic = (await registry.requests()).slice(mark);
    assert.deepEqual(
      traffic.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'skopeo pulled through the agent, not around it',
    );
    assert.ok(
      tokens.requests.some(
        (r) => r.user === 'alice' && r.scopes.includes('repository:team/a:pull'),
      ),
      'skopeo fetched its token from the realm the /v2/ challenge named',
    );
    for (const blob of image.blobs) {
      assert.equal((await registry.blobGets(blob.digest)).length, 1, 'each blob fetched once');
    }
  });

  it('lets shoal-why resolve the private image through the token realm', async () => {
    const ref = `${registry.host}/team/a:${image.tag}`;
    const realm = new URL(tokens.realm).origin;
    const user = `alice:${users.alice.password}`;
    const answered = await runTool(WHY, [
      '--mirror',
      agent.url,
      '--user',
      user,
      '--trust-realm',
      realm,
      '--json',
      ref,
    ]);
    assert.equal(answered.code, 0, answered.stderr);
    const rows = JSON.parse(answered.stdout) as { digest: string; record?: { image: string } }[];
    assert.deepEqual(rows.map((r) => r.digest).sort(), image.blobs.map((b) => b.digest).sort());
    for (const row of rows) {
      assert.ok(row.record !== undefined, `${row.digest} was pulled through this agent`);
    }
    // The agent's record of a private blob goes only to a client the registry would serve it:
    // to anyone else on the node it says nothing, not even that the blob is here.
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const ledger = `${agent.url}/shoal/v1/blobs/${layer.digest}`;
    for (const authorization of [undefined, bearer('alice', 'team/b'), 'Bearer not-a-token']) {
      const told = await fetch(ledger, {
        headers: authorization === undefined ? {} : { authorization },
        signal: AbortSignal.timeout(10_000),
      });
      const body = await told.text();
      assert.equal(told.status, 404, `${authorization ?? 'anonymous'}: ${body}`);
      assert.ok(!body.includes('team/a'), 'nor the repository');
    }
    const toAlice = await fetch(ledger, {
      headers: { authorization: bearer('alice', 'team/a') },
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(toAlice.status, 200);
    assert.equal(((await toAlice.json()) as { digest: string }).digest, layer.digest);
    const refusals: [args: string[], message: RegExp][] = [
      [[ref], /wants credentials for team\/a: use --user$/],
      [
        ['--user', user, ref],
        /token realm http:\/\/127\.0\.0\.1:\d+ is not HTTPS on .*, so --user was not sent there: name it with --trust-realm$/,
      ],
      [
        ['--user', 'alice:wrong', '--trust-realm', realm, ref],
        /refused the credentials for team\/a \(a wrong password, or no pull access\)$/,
      ],
      [['--trust-realm', realm, ref], /--trust-realm needs --user/],
    ];
    for (const [args, message] of refusals) {
      const refused = await runTool(WHY, ['--mirror', agent.url, ...args]);
      assert.notEqual(refused.code, 0, args.join(' '));
      assert.match(refused.stderr.trim(), message, args.join(' '));
      assert.equal(refused.stderr.trim().split('\n').length, 1, 'one line');
    }
  });

  it('serves a cached layer under a public repository holding it, and no one under team/a', async () => {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const blobGets = (await registry.blobGets()).length;
    const publicToken = bearer(undefined, 'public/base');
    const url = (repository: string): string =>
      `${agent.url}/v2/${repository}/blobs/${layer.digest}?ns=${registry.host}`;

    const whole = await streamDigest(url('public/base'), {
      headers: { authorization: publicToken },
    });
    assert.equal(whole.status, 200);
    assert.equal(whole.digest, layer.digest, 'the public repository serves its layer');
    const ranged = await fetch(url('public/base'), {
      headers: { authorization: publicToken, range: 'bytes=100-199' },
    });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get('content-range'), `bytes 100-199/${layer.size}`);
    assert.equal(Buffer.from(await ranged.arrayBuffer()).length, 100);
    assert.equal((await registry.blobGets()).length, blobGets, 'from the cache, not the registry');

    const refusals: [what: string, authorization: string | undefined][] = [
      ['no credential', undefined],
      ['an anonymous token for team/a', bearer(undefined, 'team/a')],
      ['a public/base token', publicToken],
    ];
    for (const [what, authorization] of refusals) {
      for (const range of [undefined, 'bytes=0-99']) {
        for (const method of ['GET', 'HEAD'] as const) {
          const response = await fetch(url('team/a'), {
            method,
            headers: {
              ...(authorization === undefined ? {} : { authorization }),
              ...(range === undefined ? {} : { range }),
            },
          });
          const body = Buffer.from(await response.arrayBuffer());
          const label = `${what}, ${method}${range === undefined ? '' : ' with Range'}`;
          assert.equal(response.status, 401, label);
          // The registry adds `error="insufficient_scope"` for a token without the scope.
          assert.ok(
            (response.headers.get('www-authenticate') ?? '').startsWith(
              `Bearer realm="${tokens.realm}",service="${tokens.service}",scope="repository:team/a:pull"`,
            ),
            `${label}: the registry's challenge`,
          );
          assert.equal(response.headers.get('content-range'), null, label);
          if (method === 'GET') {
            assert.equal(ociCode(body), 'UNAUTHORIZED', label);
            assert.ok(body.length < 1024, `${label}: an error body, not the layer`);
          }
        }
      }
    }
  });

  it('lets skopeo without credentials copy the public image through the agent', async () => {
    const out = join(dir, 'public');
    await skopeoCopy(`docker://${agentHost()}/public/base:${image.tag}`, `oci:${out}:x`, {
      timeoutMs: 120_000,
    });
    assert.ok(await holdsImage(out));
    assert.ok(
      tokens.requests.some(
        (r) => r.user === 'anonymous' && r.scopes.includes('repository:public/base:pull'),
      ),
      'skopeo asked the realm for an anonymous token',
    );
  });
});
