/**
 * What a private registry answers reaches the client as the registry sent it: a 401 with its
 * challenge, 403, 404 with the OCI error body, 429 with Retry-After (a proxy in front of the
 * real registry answers 403 and 429 on demand). A revoked credential stops working once the
 * authorization TTL has passed, and a credential the registry refuses while the agent still
 * holds its yes gets the registry's 401 from the blob fetch itself. containerd with a node-wide
 * Authorization header in hosts.toml pulls through the agent.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  generateImage,
  makeTempDir,
  serviceMain,
  pushImage,
  startAgent,
  startContainerd,
  startFaultProxy,
  startRegistry,
  Teardown,
  waitFor,
  writeMirrorHosts,
  type AgentProcess,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { runTool } from '../src/cli.js';
import { MiB } from '../src/files.js';
import { ociCode, streamDigest } from '../src/http.js';

const WHY = serviceMain('agent').replace(/main\.js$/, 'why.js');
const repository = 'private/app';
const username = 'puller';
const oldPassword = 'first-password';
const newPassword = 'second-password';
const basic = (password: string): string =>
  `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
/** How long the agent reuses the registry's yes: the revocation test waits it out. */
const AUTHZ_TTL_MS = 8_000;

const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Buffer;
}

/** The agent's SHOAL_AGENT_AUTHZ_TIMEOUT_MS here: also how long a `/v2/` check waits. */
const PING_TIMEOUT_MS = 2_000;
/** A configured registry nothing listens for. */
const NOBODY = 'nobody.invalid:5000';

describe('registry answers through the agent, for a private registry', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let proxy: FaultProxy;
  let agent: AgentProcess;
  let image: GeneratedImage;

  /** A request at the agent for `path` under the repository. */
  const ask = async (
    path: string,
    method: 'GET' | 'HEAD',
    headers: Record<string, string> = {},
  ): Promise<Answer> => {
    const response = await fetch(`${agent.url}/v2/${repository}/${path}?ns=${registry.host}`, {
      method,
      headers: { accept: MANIFEST_ACCEPT, ...headers },
      signal: AbortSignal.timeout(30_000),
    });
    return {
      status: response.status,
      headers: response.headers,
      body: Buffer.from(await response.arrayBuffer()),
    };
  };
  /** The image's paths: a tag, its manifest by digest, a layer. */
  const paths = (): string[] => [
    `manifests/${image.tag}`,
    `manifests/${image.manifest.digest}`,
    `blobs/${image.layers[0]?.digest ?? ''}`,
  ];
  /**
   * Asks each of `asked` with GET and HEAD, sending `headers`: every answer is `status`, a GET's
   * with `code` in its OCI error body, and passes `check`.
   */
  const expectAnswers = async (
    asked: readonly string[],
    headers: Record<string, string>,
    status: number,
    code: string,
    check: (answer: Answer, what: string) => void = () => undefined,
  ): Promise<void> => {
    for (const path of asked) {
      for (const method of ['GET', 'HEAD'] as const) {
        const answer = await ask(path, method, headers);
        const what = `${method} ${path} ${headers.range ?? ''}`;
        assert.equal(answer.status, status, what);
        check(answer, what);
        if (method === 'GET') {
          assert.equal(ociCode(answer.body), code, what);
        }
      }
    }
  };

  before(async () => {
    registry = await startRegistry({ auth: { username, password: oldPassword } });
    teardown.add('registry', () => registry.stop());
    proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => proxy.stop());
    const dir = await makeTempDir('registry-answers');
    teardown.add('dir', () => dir.remove());
    image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [2 * MiB, 1 * MiB],
      seed: 'registry-answers',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `${username}:${oldPassword}`,
    });
    // The agent knows the registry by its name and reaches it through the proxy.
    // A second registry nothing listens for: its /v2/ check fails at once.
    agent = await startAgent({
      registries: `${registry.host}=${proxy.url},${NOBODY}=http://127.0.0.1:1`,
      defaultRegistry: registry.host,
      env: {
        SHOAL_AGENT_AUTHZ_TTL_MS: String(AUTHZ_TTL_MS),
        SHOAL_AGENT_AUTHZ_TIMEOUT_MS: String(PING_TIMEOUT_MS),
      },
    });
    teardown.add('agent', () => agent.stop());
  });

  after(async () => {
    await teardown.run();
  });

  /**
   * A 429's Retry-After is honoured: until it has passed the agent answers the same requests
   * 429 itself with the seconds left (`registry-rate-limits.test.ts`), so each answer here
   * carries at most `retryAfterS` and the test waits it out before the next.
   */
  const assertRetryAfter = (answer: Answer, retryAfterS: number, what: string): void => {
    const left = Number(answer.headers.get('retry-after'));
    assert.ok(left >= 1 && left <= retryAfterS, `${what}: Retry-After ${String(left)}`);
  };
  const RETRY_AFTER_S = 2;

  it('passes a 429 with its Retry-After through, for tags, manifests and blobs', async () => {
    proxy.set({ kind: 'status', statuses: [429], retryAfterS: RETRY_AFTER_S });
    try {
      const headers = { authorization: basic(oldPassword) };
      await expectAnswers(paths(), headers, 429, 'TOOMANYREQUESTS', (answer, what) => {
        assertRetryAfter(answer, RETRY_AFTER_S, what);
        assert.equal(answer.headers.get('docker-content-digest'), null, what);
      });
    } finally {
      proxy.set(undefined);
      await sleep(RETRY_AFTER_S * 1000);
    }
  });

  it('passes a 429 on GETs only through after the check passed', async () => {
    // As Docker Hub counts pulls: HEADs (the check) pass, GETs are limited.
    proxy.set({ kind: 'status', statuses: [429], retryAfterS: RETRY_AFTER_S, methods: ['GET'] });
    try {
      for (const path of paths()) {
        const answer = await ask(path, 'GET', { authorization: basic(oldPassword) });
        assert.equal(answer.status, 429, path);
        assertRetryAfter(answer, RETRY_AFTER_S, path);
        assert.equal(ociCode(answer.body), 'TOOMANYREQUESTS', path);
        const head = await ask(path, 'HEAD', { authorization: basic(oldPassword) });
        assert.equal(head.status, 200, `HEAD ${path} is not limited`);
      }
    } finally {
      proxy.set(undefined);
      await sleep(RETRY_AFTER_S * 1000);
    }
    assert.equal(await agent.metric('shoal_agent_cache_size_bytes'), 0, 'nothing cached');
  });

  it('passes a 403 through with the OCI error body', async () => {
    proxy.set({ kind: 'status', statuses: [403] });
    try {
      const headers = { authorization: basic(oldPassword) };
      await expectAnswers(paths(), headers, 403, 'DENIED', (answer, what) => {
        assert.equal(answer.headers.get('www-authenticate'), null, what);
      });
    } finally {
      proxy.set(undefined);
    }
  });

  it('passes a 404 through with the OCI error body', async () => {
    const unknown = `sha256:${'0'.repeat(64)}`;
    const cases: [path: string, code: string][] = [
      [`blobs/${unknown}`, 'BLOB_UNKNOWN'],
      [`manifests/${unknown}`, 'MANIFEST_UNKNOWN'],
      ['manifests/no-such-tag', 'MANIFEST_UNKNOWN'],
    ];
    for (const [path, code] of cases) {
      for (const method of ['GET', 'HEAD'] as const) {
        const answer = await ask(path, method, { authorization: basic(oldPassword) });
        assert.equal(answer.status, 404, `${method} ${path}`);
        if (method === 'GET') {
          assert.equal(ociCode(answer.body), code, `${method} ${path}`);
        } else {
          assert.equal(answer.body.length, 0);
        }
      }
    }
  });

  it('has shoal-why say a Basic registry refused the password, without --trust-realm', async () => {
    const ref = `${registry.host}/${repository}:${image.tag}`;
    const refused = await runTool(WHY, [
      '--mirror',
      agent.url,
      '--user',
      `${username}:not-the-password`,
      ref,
    ]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(
      refused.stderr.trim(),
      /refused the credentials for private\/app \(a wrong password, or no pull access\)$/,
    );
    assert.doesNotMatch(refused.stderr, /trust-realm/, 'no token realm is involved');
  });

  it('passes the 401 challenge through to clients without or with wrong credentials', async () => {
    for (const headers of [{}, { authorization: basic('not-the-password') }]) {
      await expectAnswers(paths(), headers, 401, 'UNAUTHORIZED', (answer, what) => {
        assert.match(
          answer.headers.get('www-authenticate') ?? '',
          /^Basic realm="shoal-test"/,
          what,
        );
      });
    }
    assert.equal(await agent.metric('shoal_agent_served_bytes_total'), 0);
  });

  it("answers /v2/ with the registry's challenge, and for itself when there is none", async () => {
    const ping = async (authorization?: string): Promise<Answer> => {
      const response = await fetch(`${agent.url}/v2/?ns=${registry.host}`, {
        headers: authorization === undefined ? {} : { authorization },
        signal: AbortSignal.timeout(30_000),
      });
      return {
        status: response.status,
        headers: response.headers,
        body: Buffer.from(await response.arrayBuffer()),
      };
    };
    const challenged = await ping();
    assert.equal(challenged.status, 401);
    assert.match(challenged.headers.get('www-authenticate') ?? '', /^Basic realm="shoal-test"/);
    assert.equal(ociCode(challenged.body), 'UNAUTHORIZED');
    assert.equal((await ping(basic('not-the-password'))).status, 401);
    assert.equal((await ping(basic(oldPassword))).status, 200);
    // A registry that is failing or too slow does not take the mirror's check down with it,
    // nor its challenge: clients are still told to send their credentials.
    const assertChallenged = (answer: Answer, what: string): void => {
      assert.equal(answer.status, 401, what);
      assert.match(answer.headers.get('www-authenticate') ?? '', /^Basic realm="shoal-test"/, what);
      assert.equal(ociCode(answer.body), 'UNAUTHORIZED', what);
    };
    proxy.set({ kind: 'status', statuses: [503] });
    try {
      assertChallenged(await ping(), 'a failing registry: its last challenge');
      // A client that sent credentials (docker login, a client checking again with its token)
      // is not told they are wrong when nobody could check them: every pull is still
      // authorized on its own.
      const withCreds = await ping(basic(oldPassword));
      assert.equal(withCreds.status, 200, 'a failing registry, with credentials: the yes');
      assert.equal(withCreds.headers.get('www-authenticate'), null);
    } finally {
      proxy.set(undefined);
    }
    proxy.set({ kind: 'slow', delayMs: PING_TIMEOUT_MS * 3, rateBytes: 1024 * 1024 });
    try {
      let started = performance.now();
      assertChallenged(await ping(), 'a registry slower than the timeout: its last challenge');
      const waited = performance.now() - started;
      assert.ok(waited < PING_TIMEOUT_MS * 2, `answered after the timeout: ${waited} ms`);
      // Unreachable is remembered: the next checks answer at once, without asking it.
      const slowed = proxy.counts().slowed;
      started = performance.now();
      assertChallenged(await ping(), 'the next check');
      const withCreds = await ping(basic(oldPassword));
      assert.equal(withCreds.status, 200, 'the next check, with credentials: the yes');
      assert.equal(withCreds.headers.get('www-authenticate'), null);
      const again = performance.now() - started;
      assert.ok(again < PING_TIMEOUT_MS, `the next checks took ${again} ms`);
      assert.equal(proxy.counts().slowed, slowed, 'the registry was not asked again');
      // One line at info for the outage, not one per client's check.
      const log = await readFile(agent.process.logPath, 'utf8');
      const lines = log
        .split('\n')
        .filter((l) => l.includes('did not answer its API version check'))
        .map((l) => JSON.parse(l) as { level: string; registry: string })
        .filter((l) => l.registry === registry.host);
      assert.deepEqual(
        lines.map((l) => l.level),
        ['info'],
      );
    } finally {
      proxy.set(undefined);
    }
    // A registry that never answered has no challenge to give: the mirror's own yes.
    const nobody = await fetch(`${agent.url}/v2/?ns=${NOBODY}`, {
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(nobody.status, 200);
    assert.deepEqual(await nobody.json(), {});
  });

  it('stops serving a revoked credential once the TTL has passed', async () => {
    const [fresh, cached] = image.layers;
    assert.ok(fresh !== undefined && cached !== undefined);
    const blobUrl = (digest: string): string =>
      `${agent.url}/v2/${repository}/blobs/${digest}?ns=${registry.host}`;
    // The old password works: the tag (which vouches for the manifest's blobs) and one layer.
    const tag = await ask(`manifests/${image.tag}`, 'GET', { authorization: basic(oldPassword) });
    assert.equal(tag.status, 200);
    const yesAt = Date.now();
    const pulled = await streamDigest(blobUrl(cached.digest), {
      headers: { authorization: basic(oldPassword) },
    });
    assert.equal(pulled.digest, cached.digest);
    await waitFor(
      'the layer in the cache',
      async () => (await agent.metric('shoal_agent_cache_size_bytes')) >= cached.size,
    );

    await registry.changePassword(newPassword);
    assert.ok(Date.now() - yesAt < AUTHZ_TTL_MS - 1000, 'the restart took too long for the test');
    // Within the TTL the agent still takes the old password for this repository, but a blob
    // it does not hold is fetched with it, and the registry's 401 reaches the client.
    const hits = await agent.metric('shoal_agent_authz_decisions_total', {
      result: 'allow',
      cache: 'hit',
    });
    const refused = await ask(`blobs/${fresh.digest}`, 'GET', {
      authorization: basic(oldPassword),
    });
    assert.equal(
      await agent.metric('shoal_agent_authz_decisions_total', { result: 'allow', cache: 'hit' }),
      hits + 1,
      'allowed from the cache: the 401 came from the fetch',
    );
    assert.equal(refused.status, 401);
    assert.match(refused.headers.get('www-authenticate') ?? '', /^Basic realm="shoal-test"/);
    assert.equal(ociCode(refused.body), 'UNAUTHORIZED');

    // Past the TTL the old password is asked about again, and refused, even for cached content.
    await new Promise((resolve) => setTimeout(resolve, yesAt + AUTHZ_TTL_MS + 200 - Date.now()));
    const served = await agent.metric('shoal_agent_served_bytes_total');
    for (const path of [
      `blobs/${cached.digest}`,
      `manifests/${image.manifest.digest}`,
      `manifests/${image.tag}`,
    ]) {
      for (const range of [undefined, 'bytes=0-9']) {
        const answer = await ask(path, 'GET', {
          authorization: basic(oldPassword),
          ...(range === undefined ? {} : { range }),
        });
        assert.equal(answer.status, 401, `${path} ${range ?? ''}`);
        assert.match(answer.headers.get('www-authenticate') ?? '', /^Basic realm="shoal-test"/);
      }
    }
    assert.equal(await agent.metric('shoal_agent_served_bytes_total'), served, 'no bytes');
    const renewed = await streamDigest(blobUrl(cached.digest), {
      headers: { authorization: basic(newPassword) },
    });
    assert.equal(renewed.status, 200);
    assert.equal(renewed.digest, cached.digest, 'the new password is served from the cache');

    // A registry that answers 403 (as Harbor does for a user without access to the project)
    // refuses the cached layer just as well.
    proxy.set({ kind: 'status', statuses: [403] });
    try {
      const before = await agent.metric('shoal_agent_served_bytes_total');
      const authorization = basic('another-user-password');
      for (const headers of [{ authorization }, { authorization, range: 'bytes=0-9' }]) {
        await expectAnswers([`blobs/${cached.digest}`], headers, 403, 'DENIED');
      }
      assert.equal(await agent.metric('shoal_agent_served_bytes_total'), before, 'no bytes');
    } finally {
      proxy.set(undefined);
    }
  });

  it('lets containerd pull with a node-wide Authorization header in hosts.toml', async () => {
    const containerd = await startContainerd();
    teardown.add('containerd', () => containerd.stop());
    const ref = `${registry.host}/${repository}:${image.tag}`;
    await writeMirrorHosts(containerd.hostsDir, registry.host, proxy.url, agent.url);
    await assert.rejects(containerd.pull(ref, { timeoutMs: 60_000 }), 'no credential');
    await writeMirrorHosts(containerd.hostsDir, registry.host, proxy.url, agent.url, {
      Authorization: basic(newPassword),
    });
    const mark = (await registry.requests()).length;
    await containerd.pull(ref, { timeoutMs: 120_000 });
    const content = await containerd.contentDigests();
    for (const digest of [image.manifest.digest, ...image.blobs.map((b) => b.digest)]) {
      assert.ok(content.has(digest), `${digest} pulled`);
    }
    const traffic = (await registry.requests()).slice(mark);
    assert.deepEqual(
      traffic.filter((r) => !r.userAgent.startsWith('shoal-agent/')),
      [],
      'through the agent, not around it',
    );
  });
});
