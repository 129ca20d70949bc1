/**
 * Authorization before bytes with repository-scoped credentials (issue 10, item 1): a registry
 * behind a token server (the distribution token spec, as Docker Hub, Harbor and GitLab do it)
 * where alice may pull `team/a` only and bob `team/b` only. Content of `team/b` the agent holds
 * is never served to alice, under either repository's name; containerd's own token flow works
 * through the mirror unchanged.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startContainerd,
  startRegistry,
  startTokenServer,
  Teardown,
  writeMirrorHosts,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
  type TokenServer,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { ociCode, streamDigest } from '../src/http.js';

const users = {
  admin: { password: 'admin-pw', pull: ['*'], push: ['*'] },
  alice: { password: 'alice-pw', pull: ['team/a'] },
  bob: { password: 'bob-pw', pull: ['team/b'] },
};

/** What containerd accepts: without it the registry hides OCI manifests. */
const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

describe('authorization before bytes, with repository-scoped tokens', () => {
  const teardown = new Teardown();
  let tokens: TokenServer;
  let registry: Registry;
  let agent: AgentProcess;
  let imageA: GeneratedImage;
  let imageB: GeneratedImage;

  /** A GET (or HEAD) at the agent for `path` under `repository`, as `authorization`. */
  const ask = async (
    repository: string,
    path: string,
    authorization: string | undefined,
    method: 'GET' | 'HEAD' = 'GET',
  ): Promise<{ status: number; challenge: string; body: Buffer }> => {
    const response = await fetch(`${agent.url}/v2/${repository}/${path}?ns=${registry.host}`, {
      method,
      headers: {
        accept: MANIFEST_ACCEPT,
        ...(authorization === undefined ? {} : { authorization }),
      },
      signal: AbortSignal.timeout(30_000),
    });
    return {
      status: response.status,
      challenge: response.headers.get('www-authenticate') ?? '',
      body: Buffer.from(await response.arrayBuffer()),
    };
  };
  const bearer = (user: string | undefined, repository: string): string =>
    `Bearer ${tokens.issue(user, [`repository:${repository}:pull`])}`;

  /** Pulls `ref` with a fresh containerd pointed at the agent; returns its content digests. */
  const containerdPull = async (ref: string, user: string): Promise<Set<string>> => {
    const containerd = await startContainerd();
    try {
      await writeMirrorHosts(containerd.hostsDir, registry.host, registry.url, agent.url);
      await containerd.pull(ref, { user, timeoutMs: 120_000 });
      return await containerd.contentDigests();
    } finally {
      await containerd.stop();
    }
  };

  before(async () => {
    tokens = await startTokenServer(users);
    teardown.add('tokens', () => tokens.stop());
    registry = await startRegistry({ tokenAuth: tokens });
    teardown.add('registry', () => registry.stop());
    const dir = await makeTempDir('authz-token');
    teardown.add('dir', () => dir.remove());
    imageA = await generateImage(`${dir.path}/a`, { layerSizes: [3 * MiB, 1 * MiB], seed: 'a' });
    imageB = await generateImage(`${dir.path}/b`, { layerSizes: [2 * MiB], seed: 'b' });
    const admin = `admin:${users.admin.password}`;
    await pushImage(imageA, registry.host, 'team/a', { destCreds: admin });
    await pushImage(imageB, registry.host, 'team/b', { destCreds: admin });
    agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
    });
    teardown.add('agent', () => agent.stop());
  });

  after(async () => {
    await teardown.run();
  });

  it('lets containerd with alice credentials pull team/a through the token flow', async () => {
    const mark = (await registry.requests()).length;
    const content = await containerdPull(
      `${registry.host}/team/a:${imageA.tag}`,
      `alice:${users.alice.password}`,
    );
    assert.ok(content.has(imageA.manifest.digest));
    for (const blob of imageA.blobs) {
      assert.ok(content.has(blob.digest), `${blob.digest} pulled`);
    }
    const traffic = (await registry.requests()).slice(mark);
    assert.deepEqual(
      traffic.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'every registry request came from the agent',
    );
    assert.ok(
      tokens.requests.some(
        (r) => r.user === 'alice' && r.scopes.includes('repository:team/a:pull'),
      ),
      'containerd fetched its token from the realm the challenge named',
    );
    assert.equal(await agent.metric('shoal_agent_verification_failures_total'), 0);
  });

  it('answers a second pull by alice without asking the registry about each blob', async () => {
    const mark = (await registry.requests()).length;
    const content = await containerdPull(
      `${registry.host}/team/a:${imageA.tag}`,
      `alice:${users.alice.password}`,
    );
    for (const blob of imageA.blobs) {
      assert.ok(content.has(blob.digest));
    }
    const traffic = (await registry.requests()).slice(mark);
    assert.deepEqual(
      traffic.filter((r) => r.uri.includes('/blobs/')),
      [],
      'the manifest alice was served vouches for its blobs',
    );
  });

  it('never serves team/b content bob pulled to alice', async () => {
    for (const blob of imageB.blobs) {
      const outcome = await streamDigest(
        `${agent.url}/v2/team/b/blobs/${blob.digest}?ns=${registry.host}`,
        { headers: { authorization: bearer('bob', 'team/b') } },
      );
      assert.equal(outcome.status, 200);
      assert.equal(outcome.digest, blob.digest, 'bob got team/b');
    }
    const manifest = await ask(
      'team/b',
      `manifests/${imageB.manifest.digest}`,
      bearer('bob', 'team/b'),
    );
    assert.equal(manifest.status, 200);

    const attempts: [who: string, repository: string, authorization: string | undefined][] = [
      ['alice with her team/a token', 'team/b', bearer('alice', 'team/a')],
      ['alice with a team/b token (no access in it)', 'team/b', bearer('alice', 'team/b')],
      ['anonymous', 'team/b', undefined],
      ['bob with his team/b token, under team/a', 'team/a', bearer('bob', 'team/b')],
    ];
    const paths = [
      ...imageB.blobs.map((b) => `blobs/${b.digest}`),
      `manifests/${imageB.manifest.digest}`,
    ];
    for (const [who, repository, authorization] of attempts) {
      for (const path of paths) {
        for (const method of ['GET', 'HEAD'] as const) {
          const answer = await ask(repository, path, authorization, method);
          assert.equal(answer.status, 401, `${who} ${method} ${path}`);
          assert.ok(
            answer.challenge.startsWith(
              `Bearer realm="${tokens.realm}",service="${tokens.service}",scope="repository:${repository}:pull"`,
            ),
            `${who}: the registry's challenge, not ${answer.challenge}`,
          );
          if (method === 'GET') {
            assert.equal(ociCode(answer.body), 'UNAUTHORIZED');
            assert.ok(answer.body.length < 1024);
          }
        }
      }
    }
    assert.ok((await agent.metric('shoal_agent_authz_decisions_total', { result: 'deny' })) >= 24);
  });

  it('never serves a team/b layer to alice named under team/a', async () => {
    const layer = imageB.layers[0]?.digest ?? '';
    for (const method of ['GET', 'HEAD'] as const) {
      const answer = await ask('team/a', `blobs/${layer}`, bearer('alice', 'team/a'), method);
      assert.equal(answer.status, 404, `${method}: the registry says team/a has no such blob`);
      if (method === 'GET') {
        assert.equal(ociCode(answer.body), 'BLOB_UNKNOWN');
      }
    }
  });

  it('does not let containerd pull team/b with alice credentials', async () => {
    await assert.rejects(
      containerdPull(`${registry.host}/team/b:${imageB.tag}`, `alice:${users.alice.password}`),
    );
  });
});
