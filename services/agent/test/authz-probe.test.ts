import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { digestOf } from '@shoal/proto';
import { UpstreamClient, type UpstreamRegistry } from '@shoal/registry';
import { createMetrics } from '@shoal/runtime';

import { Authorizer } from '../src/authz/authorizer.js';
import { registryProbe } from '../src/authz/registry-probe.js';
import { createAgentMetrics } from '../src/metrics.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';

const LAYER = digestOf(Buffer.from('probe layer'));
const TOKEN = 'Bearer good';
const TIMEOUTS = { connectMs: 2000, headersMs: 2000, idleMs: 2000 };

/**
 * A registry front as the probe meets it: it redirects an authorized blob HEAD to storage that
 * refuses HEAD (a URL signed for GET only), and challenges anyone else.
 */
describe('the registry probe', () => {
  let server: Server;
  let registry: UpstreamRegistry;
  const seen: { method: string; url: string; headers: IncomingHttpHeaders }[] = [];
  let client: UpstreamClient;

  before(async () => {
    server = createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
      if (req.url?.startsWith('/storage/') === true) {
        res.writeHead(403).end();
        return;
      }
      if (req.headers.authorization !== TOKEN) {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="https://auth.test/token"' }).end();
        return;
      }
      res.writeHead(307, { location: '/storage/signed-for-get' }).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    registry = { host: `127.0.0.1:${port}`, url: new URL(`http://127.0.0.1:${port}`) };
    client = new UpstreamClient(TIMEOUTS);
  });

  after(async () => {
    await client.close();
    await new Promise((resolve) => server.close(resolve));
  });

  it('takes a redirect as a yes for the repository but not for the content, without following it, and passes a challenge back', async () => {
    const metrics = createAgentMetrics(createMetrics('agent'));
    const authz = new Authorizer({
      probe: registryProbe(new RegistryRequests(client, metrics, TIMEOUTS)),
      ttlMs: 60_000,
      denyTtlMs: 5_000,
      staleMs: 0,
      maxEntries: 10,
      timeoutMs: 2_000,
      unreachable: 'deny',
    });
    const subject = {
      registry,
      repository: 'team/app',
      kind: 'blob' as const,
      digest: LAYER,
      authorization: TOKEN,
    };
    // Some registries redirect every request, whatever they hold: the content is to be read
    // from the registry, through the redirect, not from what the node holds.
    const first = await authz.check(subject);
    assert.equal(first.kind, 'upstream');
    assert.equal(first.answer.status, 307);
    assert.deepEqual(
      seen.map((r) => `${r.method} ${r.url}`),
      [`HEAD /v2/team/app/blobs/${LAYER.toString()}`],
      'one HEAD, the redirect not followed',
    );
    assert.equal(seen[0]?.headers.authorization, TOKEN, "the client's own header");
    // Nothing learned about the content: the next check asks again.
    assert.equal((await authz.check(subject)).kind, 'upstream');
    assert.equal(seen.length, 2, 'asked again');
    // Once a manifest of the repository the client was served names the layer, it is held.
    authz.learnAllowed(registry, 'team/app', TOKEN, undefined);
    authz.learnManifest(
      registry,
      'team/app',
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: {
            mediaType: 'application/vnd.oci.image.config.v1+json',
            digest: LAYER.toString(),
            size: 11,
          },
          layers: [],
        }),
      ),
    );
    assert.deepEqual(await authz.check(subject), { kind: 'allow' });
    assert.equal(seen.length, 2, 'from the caches');

    const refused = await authz.check({ ...subject, authorization: undefined });
    assert.equal(refused.kind, 'deny');
    assert.equal(refused.answer.status, 401);
    assert.equal(
      refused.answer.headers['www-authenticate'],
      'Bearer realm="https://auth.test/token"',
    );
    authz.close();
  });

  it('fails closed when the registry does not answer', async () => {
    const metrics = createAgentMetrics(createMetrics('agent'));
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    const authz = new Authorizer({
      probe: registryProbe(new RegistryRequests(client, metrics, TIMEOUTS)),
      ttlMs: 60_000,
      denyTtlMs: 5_000,
      staleMs: 0,
      maxEntries: 10,
      timeoutMs: 2_000,
      unreachable: 'deny',
    });
    const decision = await authz.check({
      registry: { host: `127.0.0.1:${port}`, url: new URL(`http://127.0.0.1:${port}`) },
      repository: 'team/app',
      kind: 'blob',
      digest: LAYER,
      authorization: TOKEN,
    });
    assert.equal(decision.kind, 'unavailable');
    assert.match(decision.reason, /ECONNREFUSED/);
  });
});
