/**
 * Over 10,000 generated bad inputs (fast-check, fixed seeds, so a failure replays) against real
 * services: the agent's mirror (paths, methods, `ns=`, Range, Accept and Authorization), the
 * watcher's webhooks and preheat API, and every NATS subject Shoal consumes. The oracle:
 * no 5xx for a client's mistake, an error answer that says what is wrong, no process dies, no
 * memory runs away, and afterwards the swarm still pulls an image byte for byte.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  signTestToken,
  WATCHER_TOKEN,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';
import fc from 'fast-check';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';
import { sendRaw, type RawAnswer } from '../src/raw-http.js';
import { FAST_SWARM_ENV } from '../src/swarm.js';

const REPOSITORY = 'shoal/fuzz';
/** Stands for a body over the watcher's limit. */
const OVERSIZE = Buffer.from('oversize');
/** Inputs per surface; together over 10,000. */
const RUNS = { mirror: 5_000, pieces: 1_500, webhooks: 2_000, api: 1_000, nats: 2_500 } as const;

async function rssBytes(service: ServiceProcess): Promise<number> {
  const status = await readFile(`/proc/${String(service.process.child.pid)}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN) * 1024;
}

function alive(service: ServiceProcess): boolean {
  return service.process.child.exitCode === null && service.process.child.signalCode === null;
}

/** A 4xx/5xx answer with a JSON body must say what is wrong. */
function assertClearError(answer: RawAnswer, what: string): void {
  if (answer.status < 400 || answer.body.length === 0) {
    return;
  }
  if (!(answer.headers['content-type'] ?? '').includes('json')) {
    return;
  }
  if (answer.headers['transfer-encoding'] === 'chunked') {
    return;
  }
  const parsed = JSON.parse(answer.body.toString('utf8')) as {
    errors?: { code?: string; message?: string }[];
    error?: string;
    message?: string;
  };
  const reason = parsed.errors?.[0]?.code ?? parsed.error ?? parsed.message;
  assert.ok(
    typeof reason === 'string' && reason.length > 0,
    `${what}: no reason in ${answer.body.toString('utf8').slice(0, 200)}`,
  );
}

/** One ASCII character of `chars`. */
const charFrom = (chars: string): fc.Arbitrary<string> => fc.constantFrom(...chars.split(''));

// Pieces of requests: mostly near misses of valid ones, which reach deeper than noise.
const hex = (length: number): fc.Arbitrary<string> =>
  fc.string({ unit: charFrom('0123456789abcdef'), minLength: length, maxLength: length });
const printable = fc.string({ unit: 'grapheme-ascii', maxLength: 80 });

describe('fuzzing', () => {
  let registry: Registry;
  let nats: NatsServer;
  let image: GeneratedImage;
  let agent: AgentProcess;
  let seed: ServiceProcess;
  let watcher: ServiceProcess;
  let nc: NatsConnection;
  const services: ServiceProcess[] = [];
  let workDir: { path: string; remove(): Promise<void> };

  before(async () => {
    registry = await startRegistry();
    workDir = await makeTempDir('fuzz');
    image = await generateImage(workDir.path, { layerSizes: [3 * MiB, 1 * MiB], seed: 'fuzz' });
    await pushImage(image, registry.host, REPOSITORY);
    nats = await startNats();
    const registries = `${registry.host}=${registry.url}`;
    services.push(await startTracker({ natsUrl: nats.url }));
    seed = await startSeedServer({ natsUrl: nats.url, registries });
    services.push(seed);
    watcher = await startWatcher({ natsUrl: nats.url, registries });
    services.push(watcher);
    agent = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      env: { ...FAST_SWARM_ENV },
    });
    services.push(agent);
    nc = await connect({ servers: nats.url, timeout: 5_000 });
  });

  after(async () => {
    await nc.close();
    for (const service of services.reverse()) {
      await service.stop();
    }
    await nats.stop();
    await registry.stop();
    await workDir.remove();
  });

  it(`mirror: ${String(RUNS.mirror)} bad requests, no 5xx, no crash, bounded memory`, async () => {
    const [layer] = image.layers;
    assert.ok(layer !== undefined);
    const digest = fc.oneof(
      fc.constant(layer.digest),
      hex(64).map((h) => `sha256:${h}`),
      hex(63).map((h) => `sha256:${h}`),
      hex(128).map((h) => `sha512:${h}`),
      fc.constantFrom('md5:abc', 'sha256:', ':', 'sha256:ZZ', `${layer.digest}%00`, 'sha256:../x'),
      printable,
    );
    const segment = fc.oneof(
      fc.constantFrom('shoal', 'fuzz', 'library', '..', '.', '%2e%2e', '%2F', 'UPPER', '_', '-a'),
      printable.map(encodeURIComponent),
      fc.string({ unit: charFrom('abc/.-_%'), maxLength: 300 }),
    );
    const target = fc
      .record({
        prefix: fc.constantFrom('/v2/', '/v2', '/v1/', '/', '//v2/', '/v2/../'),
        name: fc.array(segment, { minLength: 0, maxLength: 6 }).map((s) => s.join('/')),
        kind: fc.constantFrom('/manifests/', '/blobs/', '/tags/list', '/blobs/uploads/', '/', ''),
        ref: fc.oneof(digest, fc.constantFrom('latest', 'v1', '', 'a'.repeat(200)), printable),
        query: fc.oneof(
          fc.constant(''),
          fc.constant(`?ns=${registry.host}`),
          fc.constantFrom('?ns=', '?ns=evil.example.com', `?ns=${registry.host}&ns=x`, '?ns'),
          printable.map((q) => `?ns=${encodeURIComponent(q)}`),
          printable.map((q) => `?${q}`),
        ),
      })
      .map(({ prefix, name, kind, ref, query }) => `${prefix}${name}${kind}${ref}${query}`);
    const range = fc.oneof(
      fc.constantFrom('bytes=0-', 'bytes=-1', 'bytes=5-1', 'bytes=0-0,2-3', 'bytes=', 'items=0-1'),
      fc
        .tuple(fc.bigInt({ min: -10n, max: 2n ** 70n }), fc.bigInt({ min: -10n, max: 2n ** 70n }))
        .map(([a, b]) => `bytes=${a.toString()}-${b.toString()}`),
      printable,
    );
    const headers = fc.array(
      fc.oneof(
        range.map((v) => ['Range', v] as const),
        printable.map((v) => ['Accept', v] as const),
        fc
          .oneof(
            printable,
            fc.constantFrom('Basic', 'Basic !!!', 'Bearer ', `Bearer ${'x'.repeat(4000)}`),
          )
          .map((v) => ['Authorization', v] as const),
      ),
      { maxLength: 3 },
    );
    const method = fc.constantFrom(
      'GET',
      'GET',
      'GET',
      'HEAD',
      'HEAD',
      'PUT',
      'POST',
      'DELETE',
      'PATCH',
      'OPTIONS',
      'BREW',
    );
    const rssBefore = await rssBytes(agent);
    let answered = 0;
    await fc.assert(
      fc.asyncProperty(method, target, headers, async (m, t, h) => {
        const answer = await sendRaw(agent.port, { method: m, target: t, headers: h });
        const what = `${m} ${t} ${JSON.stringify(h).slice(0, 300)}`;
        assert.ok(
          answer.status >= 200 && answer.status < 500,
          `${what}: status ${String(answer.status)}`,
        );
        assertClearError(answer, what);
        answered += 1;
      }),
      { numRuns: RUNS.mirror, seed: 20261130, endOnFailure: true },
    );
    assert.equal(answered, RUNS.mirror);
    assert.ok(alive(agent), 'the agent is still running');
    const grown = (await rssBytes(agent)) - rssBefore;
    assert.ok(grown < 128 * MiB, `agent RSS grew by ${String(Math.round(grown / MiB))} MiB`);
  });

  it(`piece endpoints: ${String(RUNS.pieces)} bad requests each to the peer port and the seed server, all 4xx`, async () => {
    const [layer] = image.layers;
    assert.ok(layer !== undefined);
    // The seed server and the agent hold the layer, so that near misses reach the piece code.
    const pulled = await streamDigest(`${agent.url}/v2/${REPOSITORY}/blobs/${layer.digest}`);
    assert.equal(pulled.digest, layer.digest);
    const exp = Date.now() + 10 * 60_000;
    const digest = fc.oneof(
      fc.constant(layer.digest),
      hex(64).map((h) => `sha256:${h}`),
      fc.constantFrom('sha512:00', 'sha256:', 'md5:00', 'sha256:ZZ'),
      printable,
    );
    const target = fc
      .record({
        prefix: fc.constantFrom('/pieces/', '/pieces', '/piece/', '//pieces/', '/v2/', '/'),
        digest: digest.map((d) => d.replace(':', '/')),
        index: fc.oneof(
          fc.nat({ max: 20 }).map(String),
          fc.constantFrom('-1', '1e3', '999999999', '9999999999', '0x1', '', '0/0', '..'),
          printable.map(encodeURIComponent),
        ),
      })
      .map(({ prefix, digest: d, index }) => `${prefix}${d}/${index}`);
    const token = fc.oneof(
      fc.constantFrom('', 'x', 'a.b', 'a.b.c', '....'),
      printable,
      fc.base64String({ maxLength: 200 }),
      // Well-signed, but for the wrong blob, the wrong peer, or expired.
      fc.constantFrom(
        signTestToken({ blob: `sha256:${'0'.repeat(64)}`, peer: 'fuzzer', exp }),
        signTestToken({ blob: layer.digest, peer: 'someone-else', exp }),
        signTestToken({ blob: layer.digest, peer: 'fuzzer', exp: Date.now() - 60_000 }),
        signTestToken({ blob: layer.digest, peer: 'fuzzer', exp }),
      ),
    );
    const headers = fc.array(
      fc.oneof(
        token.map((t) => ['Authorization', `ShoalPiece ${t}`] as const),
        token.map((t) => ['Authorization', t] as const),
        fc
          .oneof(fc.constantFrom('fuzzer', '', 'someone-else', 'x'.repeat(300)), printable)
          .map((p) => ['shoal-peer', p] as const),
        printable.map((v) => ['Range', v] as const),
      ),
      { maxLength: 3 },
    );
    const method = fc.constantFrom('GET', 'GET', 'GET', 'HEAD', 'PUT', 'POST', 'DELETE');
    assert.ok(agent.peerUrl !== undefined);
    for (const [name, port, service] of [
      ['peer port', Number(new URL(agent.peerUrl).port), agent],
      ['seed server', seed.port, seed],
    ] as const) {
      const rssBefore = await rssBytes(service);
      let answered = 0;
      await fc.assert(
        fc.asyncProperty(method, target, headers, async (m, t, h) => {
          const answer = await sendRaw(port, { method: m, target: t, headers: h });
          const what = `${name}: ${m} ${t} ${JSON.stringify(h).slice(0, 300)}`;
          assert.ok(
            answer.status >= 200 && answer.status < 500,
            `${what}: status ${String(answer.status)}`,
          );
          assertClearError(answer, what);
          answered += 1;
        }),
        { numRuns: RUNS.pieces, seed: 90210, endOnFailure: true },
      );
      assert.equal(answered, RUNS.pieces);
      assert.ok(alive(service), `the ${name} is still running`);
      const grown = (await rssBytes(service)) - rssBefore;
      assert.ok(grown < 128 * MiB, `${name} RSS grew by ${String(Math.round(grown / MiB))} MiB`);
    }
  });

  it(`watcher: ${String(RUNS.webhooks)} bad webhooks and ${String(RUNS.api)} bad API calls, all 4xx`, async () => {
    const auth = fc.oneof(
      fc.constant([['Authorization', `Bearer ${WATCHER_TOKEN}`]] as const),
      fc.constant([] as const),
      printable.map((v) => [['Authorization', v]] as const),
      hex(64).map((h) => [['X-Shoal-Signature-256', `sha256=${h}`]] as const),
    );
    const body = fc.oneof(
      fc.json().map((j) => Buffer.from(j)),
      fc.jsonValue().map((v) => Buffer.from(JSON.stringify({ events: [v] }))),
      fc
        .jsonValue()
        .map((v) => Buffer.from(JSON.stringify({ type: 'PUSH_ARTIFACT', event_data: v }))),
      fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
      // Over the 1 MiB body limit (made in the property, so a failure prints short).
      fc.constant(OVERSIZE),
    );
    const contentType = fc.constantFrom(
      'application/json',
      'application/vnd.docker.distribution.events.v1+json',
      'text/plain',
      'multipart/form-data; boundary=x',
      '',
    );
    const format = fc.oneof(
      fc.constantFrom('distribution', 'harbor'),
      printable.map(encodeURIComponent),
    );
    await fc.assert(
      fc.asyncProperty(format, auth, contentType, body, async (f, a, ct, b) => {
        const headers: (readonly [string, string])[] = [...a];
        if (ct !== '') {
          headers.push(['Content-Type', ct]);
        }
        const bytes = b === OVERSIZE ? Buffer.alloc(2 * MiB, 0x7b) : b;
        const answer = await sendRaw(watcher.port, {
          method: 'POST',
          target: `/webhooks/${f}`,
          headers,
          body: bytes,
        });
        const what = `webhook ${f} ${ct} ${bytes.subarray(0, 120).toString('latin1')}`;
        // A server may refuse an oversize body by closing before it has all been sent.
        const refusedEarly = answer.status === 0 && bytes.length > MiB;
        assert.ok(
          refusedEarly || (answer.status >= 200 && answer.status < 500),
          `${what}: status ${String(answer.status)}`,
        );
        assertClearError(answer, what);
      }),
      { numRuns: RUNS.webhooks, seed: 11302026, endOnFailure: true },
    );
    const apiCall = fc.oneof(
      fc.record({
        method: fc.constant('POST'),
        target: fc.constant('/preheat'),
        body: fc.oneof(
          fc.json(),
          fc
            .record({ image: printable, scope: printable, selector: fc.jsonValue() })
            .map((v) => JSON.stringify(v)),
          fc
            .record({ image: fc.constant(`${registry.host}/${REPOSITORY}:${'x'.repeat(300)}`) })
            .map((v) => JSON.stringify(v)),
        ),
      }),
      fc.record({
        method: fc.constant('GET'),
        target: fc.oneof(
          printable.map((id) => `/preheat/${encodeURIComponent(id)}`),
          printable.map((q) => `/preheat?limit=${encodeURIComponent(q)}`),
        ),
        body: fc.constant(''),
      }),
    );
    await fc.assert(
      fc.asyncProperty(apiCall, fc.boolean(), async (call, authorized) => {
        const headers: [string, string][] = [['Content-Type', 'application/json']];
        if (authorized) {
          headers.push(['Authorization', `Bearer ${WATCHER_TOKEN}`]);
        }
        const answer = await sendRaw(watcher.port, {
          method: call.method,
          target: call.target,
          headers,
          ...(call.body === '' ? {} : { body: Buffer.from(call.body) }),
        });
        const what = `${call.method} ${call.target} ${call.body.slice(0, 200)}`;
        // 2xx for a well-formed request (a job may be queued), never 5xx.
        assert.ok(
          answer.status >= 200 && answer.status < 500,
          `${what}: status ${String(answer.status)}`,
        );
        assertClearError(answer, what);
      }),
      { numRuns: RUNS.api, seed: 4242, endOnFailure: true },
    );
    assert.ok(alive(watcher), 'the watcher is still running');
  });

  it(`NATS: ${String(RUNS.nats)} bad messages on every subject; every service keeps running and the swarm still pulls`, async () => {
    const token = fc.string({
      unit: charFrom('abcdefghijklmnopqrstuvwxyz0123456789-_'),
      minLength: 1,
      maxLength: 70,
    });
    const blobToken = fc.oneof(
      hex(64).map((h) => `sha256.${h}`),
      token,
      token.map((t) => `sha256.${t}`),
    );
    const subject = fc.oneof(
      fc.tuple(blobToken, token).map(([b, p]) => `shoal.swarm.v1.have.${b}.${p}`),
      token.map((p) => `shoal.swarm.v1.gone.${p}`),
      blobToken.map((b) => `shoal.swarm.v1.want.${b}`),
      blobToken.map((b) => `shoal.seed.v1.request.${b}`),
      blobToken.map((b) => `shoal.pieces.v1.${b}`),
      fc.constant('shoal.preheat.v1.command'),
      fc.constant('shoal.preheat.v1.nodes'),
      fc
        .tuple(token, fc.constantFrom('seed', 'agent', 'x'), token)
        .map(([j, r, p]) => `shoal.preheat.v1.report.${j}.${r}.${p}`),
      token.map((p) => `shoal.handout.v1.${p}`),
    );
    const payload = fc.oneof(
      fc.json().map((j) => Buffer.from(j)),
      fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v))),
      fc
        .record({
          type: fc.constantFrom(
            'piece-have',
            'piece-want',
            'peer-gone',
            'seed-request',
            'preheat',
            'preheat-nodes',
            'preheat-report',
            'handout',
          ),
          blob: fc.oneof(
            hex(64).map((h) => `sha256:${h}`),
            printable,
          ),
          peer: fc.oneof(token, printable),
          registry: fc.oneof(fc.constant(registry.host), printable),
          repository: fc.oneof(fc.constant(REPOSITORY), printable, fc.constant('../../etc')),
          size: fc.oneof(fc.integer(), fc.constant(2 ** 52), fc.double()),
          pieceSize: fc.oneof(fc.integer(), fc.constant(1)),
          pieces: fc.jsonValue(),
          have: fc.jsonValue(),
        })
        .map((v) => Buffer.from(JSON.stringify(v))),
      fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)),
    );
    await fc.assert(
      fc.asyncProperty(subject, payload, (s, p) => {
        nc.publish(s, p);
      }),
      { numRuns: RUNS.nats, seed: 777, endOnFailure: true },
    );
    await nc.flush();
    // Let the consumers read the flood.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    for (const service of services) {
      assert.ok(alive(service), `${service.url} is still running`);
      assert.equal((await fetch(`${service.url}/readyz`)).status, 200, `${service.url} is ready`);
    }
    const tracker = services[0];
    assert.ok(tracker !== undefined);
    const rejected =
      (await tracker.metric('shoal_tracker_events_rejected_total', {
        type: 'piece-have',
        reason: 'invalid',
      })) +
      (await tracker.metric('shoal_tracker_events_rejected_total', {
        type: 'piece-want',
        reason: 'invalid',
      }));
    assert.ok(rejected > 0, 'the tracker counted the invalid events it refused');
    // The swarm still works: every blob of the image, byte for byte, through the agent.
    for (const blob of image.blobs) {
      const outcome = await streamDigest(`${agent.url}/v2/${REPOSITORY}/blobs/${blob.digest}`);
      assert.equal(outcome.status, 200);
      assert.equal(outcome.digest, blob.digest);
    }
  });
});
