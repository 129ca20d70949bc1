/**
 * Tracing (issue 5): "Preheat traces start at the webhook". A push to the registry notifies
 * the watcher; the preheat it queues is one trace, rooted at the watcher's webhook SERVER
 * span, through the job's CONSUMER span on the watcher (context in the command's NATS
 * headers) to the seed server's CONSUMER span for each blob's seed request (again in NATS
 * headers), and the seed server's fetch from the origin and write to the object gateway.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  formatTraceTree,
  freePort,
  generateImage,
  makeTempDir,
  pushImage,
  startNats,
  startOtlpReceiver,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  Teardown,
  traceView,
  waitFor,
  WATCHER_TOKEN,
  type CollectedSpan,
  type GeneratedImage,
  type OtlpReceiver,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';

interface Job {
  readonly id: string;
  readonly image: string;
  readonly state: string;
  readonly blobsTotal: number;
  readonly blobsDone: number;
}

describe('a preheat from a push webhook is one trace', () => {
  const teardown = new Teardown();
  let receiver: OtlpReceiver;
  let registry: Registry;
  let watcher: ServiceProcess;
  let image: GeneratedImage;

  before(async () => {
    receiver = await startOtlpReceiver();
    teardown.add('receiver', () => receiver.stop());
    const nats = await startNats();
    teardown.add('nats', () => nats.stop());
    // The registry must know where the watcher listens before the watcher starts.
    const watcherPort = await freePort();
    registry = await startRegistry({
      notify: {
        url: `http://127.0.0.1:${watcherPort}/webhooks/distribution`,
        headers: { Authorization: `Bearer ${WATCHER_TOKEN}` },
      },
    });
    teardown.add('registry', () => registry.stop());
    const registries = `${registry.host}=${registry.url}`;
    const tracker = await startTracker({ natsUrl: nats.url, env: receiver.env });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({
      natsUrl: nats.url,
      registries,
      id: 'seed-traced',
      env: receiver.env,
    });
    teardown.add('seed', () => seed.stop());
    watcher = await startWatcher({
      natsUrl: nats.url,
      registries,
      port: watcherPort,
      env: receiver.env,
    });
    teardown.add('watcher', () => watcher.stop());
    const dir = await makeTempDir('preheat-trace');
    teardown.add('images', () => dir.remove());
    image = await generateImage(join(dir.path, 'traced'), {
      layerSizes: [2 * MiB, 512 * 1024],
      seed: 'preheat-trace',
    });
  });

  after(() => teardown.run());

  it('links the webhook, the preheat run, the seed requests and the seed’s fetch and write', async (t) => {
    await pushImage(image, registry.host, 'team/traced');
    const job = await jobFor(watcher, `${registry.host}/team/traced:${image.tag}`);
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.blobsDone, image.blobs.length);

    // The registry notifies every push and pull (the watcher's and the seed's reads too), each
    // delivery in a trace of its own; the job's trace is the one holding its run.
    const blobs = image.blobs.length;
    const runOf = (spans: readonly CollectedSpan[]): CollectedSpan | undefined =>
      spans.find((s) => s.service === 'watcher' && s.name === 'preheat run');
    const complete = (spans: readonly CollectedSpan[]): boolean => {
      const run = runOf(spans);
      if (run === undefined) {
        return false;
      }
      const inTrace = spans.filter((s) => s.traceId === run.traceId);
      const count = (name: string): number =>
        inTrace.filter((s) => s.service === 'seedserver' && s.name === name).length;
      return (
        inTrace.some((s) => s.service === 'watcher' && s.name === 'webhook distribution') &&
        ['seed-request process', 'seed fetch', 'origin GET blob', 'gateway write'].every(
          (name) => count(name) >= blobs,
        )
      );
    };
    await receiver.waitFor('the preheat’s whole trace', complete, 30_000);
    const run = runOf(receiver.spans());
    assert.ok(run !== undefined);
    const spans = receiver.trace(run.traceId);
    const { parentOf, named, roots } = traceView(spans);
    t.diagnostic(`trace ${run.traceId}, ${spans.length} spans:\n${formatTraceTree(roots)}`);
    assert.equal(roots.length, 1, 'one root: every span has its parent in the trace');

    // The root: the watcher's SERVER span for the registry's delivery, which sent no context.
    const [webhook, ...otherWebhooks] = named('watcher', 'webhook distribution');
    assert.ok(webhook !== undefined);
    assert.deepEqual(otherWebhooks, [], 'one delivery queued the job');
    assert.equal(roots[0]?.span, webhook);
    assert.equal(webhook.kind, 'server');
    assert.equal(webhook.parentSpanId, undefined, 'the registry sent no trace context');

    // The webhook → the job's CONSUMER span, through the preheat command's NATS headers.
    assert.deepEqual(named('watcher', 'preheat run'), [run], 'the job ran once');
    assert.equal(run.kind, 'consumer');
    assert.equal(parentOf(run), webhook);
    assert.equal(run.attributes['messaging.destination.name'], 'shoal.preheat.v1.command');

    // The run → one seed-request CONSUMER span per blob on the seed server.
    const consumes = named('seedserver', 'seed-request process');
    assert.equal(consumes.length, blobs, 'one seed request per blob, each handled once');
    for (const consume of consumes) {
      assert.equal(consume.kind, 'consumer');
      assert.equal(parentOf(consume), run, 'a seed request is handled in the job’s trace');
    }

    // Inside the seed server: each blob fetched from the origin, then written to the gateway.
    const fetches = named('seedserver', 'seed fetch');
    assert.equal(fetches.length, blobs);
    for (const fetch of fetches) {
      assert.ok(consumes.includes(parentOf(fetch) ?? webhook), 'a fetch is in its request');
      assert.equal(fetch.attributes['shoal.source'], 'origin');
      assert.equal(fetch.attributes['oci.registry'], registry.host);
    }
    assert.deepEqual(
      new Set(fetches.map((s) => s.attributes['oci.digest'])),
      new Set(image.blobs.map((b) => b.digest)),
      'every blob of the image was fetched',
    );
    const origins = named('seedserver', 'origin GET blob');
    assert.equal(origins.length, blobs);
    for (const origin of origins) {
      assert.equal(origin.kind, 'client');
      assert.ok(fetches.includes(parentOf(origin) ?? webhook), 'an origin GET is in a fetch');
      assert.equal(origin.attributes['oci.repository'], 'team/traced');
    }
    const writes = named('seedserver', 'gateway write');
    assert.equal(writes.length, blobs);
    for (const write of writes) {
      assert.equal(write.kind, 'client');
      assert.ok(consumes.includes(parentOf(write) ?? webhook), 'a write is in its request');
    }
    // Each request holds its own blob's fetch and write.
    for (const consume of consumes) {
      const children = spans.filter((s) => s.parentSpanId === consume.spanId);
      const fetched = children.find((s) => s.name === 'seed fetch');
      const written = children.find((s) => s.name === 'gateway write');
      assert.ok(fetched !== undefined && written !== undefined);
      assert.equal(written.attributes['oci.digest'], fetched.attributes['oci.digest']);
    }
    assert.ok(
      spans.every((s) => !s.error),
      `no span failed: ${spans
        .filter((s) => s.error)
        .map((s) => s.name)
        .join(', ')}`,
    );
  });
});

/** Waits for the job preheating `image` to finish (done or failed) and returns it. */
async function jobFor(watcher: ServiceProcess, image: string): Promise<Job> {
  let found: Job | undefined;
  await waitFor(
    'the preheat job to finish',
    async () => {
      const response = await fetch(`${watcher.url}/preheat?limit=100`, {
        headers: { authorization: `Bearer ${WATCHER_TOKEN}` },
        signal: AbortSignal.timeout(5_000),
      });
      const { jobs } = (await response.json()) as { jobs: Job[] };
      found = jobs.find((j) => j.image === image);
      return found !== undefined && (found.state === 'done' || found.state === 'failed');
    },
    { timeoutMs: 60_000, intervalMs: 250 },
  );
  assert.ok(found !== undefined);
  return found;
}
