/**
 * An origin slower than the agents' stall timeout, per piece or to answer at all.
 *
 * Per piece (a registry across a slow link):
 * the seed server takes each 256 KiB piece in over about four seconds, and an agent that holds
 * every piece the seed has hashed hears of nothing for that long. Without the seed's intake
 * notices the agent took the silence for a stalled swarm and read the rest from the origin,
 * through the same slow link, beside the seed (in a cluster, every node at once, and the seed
 * slowed by them). With them, the bytes coming in count as the swarm moving: the agent gets
 * every piece from the seed and the origin sends the blob once.
 *
 * To answer (a registry that fetches a blob from its own storage before it answers): every GET
 * waits three stall timeouts before the registry sees it; or every transfer breaks off after
 * its first piece, and the request for the rest waits that long. The seed's notices tell of
 * its wait, and the agent waits with it rather than ask the origin too.
 *
 * Real nats-server (with the agents' and the seed server's NATS permissions), tracker, seed
 * server, agent and registry, behind a fault proxy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';

import {
  generateImage,
  type RegistryFault,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startRegistry,
  Teardown,
  type FaultProxy,
  type GeneratedImage,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster } from '../src/swarm.js';

const repository = 'shoal/slow-origin';
/** The agent's stall timeout: half of what one piece takes to come in. */
const STALL_TIMEOUT_MS = 2_000;
/** The slow link's rate, shared by every answer in flight. */
const LINK_BYTES = MiB / 16;

interface PullFigures {
  /** Bytes the agent read from the origin, and from the seed. */
  readonly origin: number;
  readonly seed: number;
  /** Downloads the agent sent to the origin because the swarm stalled. */
  readonly stalls: number;
  /** Intake notices the seed sent of bytes, and of its wait; those the agent heard. */
  readonly sent: number;
  readonly waited: number;
  readonly heard: number;
  /** Body bytes the slow origin sent during the pull. */
  readonly originSent: number;
}

describe('an origin slower than the stall timeout', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let image: GeneratedImage;
  let proxy: FaultProxy;

  before(async () => {
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('slow-origin');
    teardown.add('image', () => layout.remove());
    // Three pieces of 256 KiB (the last of one byte): about eight seconds over the link.
    image = await generateImage(layout.path, {
      layerSizes: [MiB / 2 + 1],
      seed: 'swarm-slow-origin',
    });
    await pushImage(image, registry.host, repository);
    proxy = await startFaultProxy({ upstream: registry.url });
    teardown.add('proxy', () => proxy.stop());
  });

  after(() => teardown.run());

  /** The slow link: 64 KiB/s shared by every answer in flight. */
  const slowLink: RegistryFault = { kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES };

  /**
   * One pull through one agent of a cluster of its own, the seed looking every `noticeMs`,
   * the origin behind `fault`.
   */
  async function pull(
    t: TestContext,
    noticeMs: number,
    fault: RegistryFault,
  ): Promise<PullFigures> {
    const cluster = await startCluster({
      layerSizes: [],
      seed: 'swarm-slow-origin',
      repository,
      trackers: 1,
      agents: [
        {
          peerId: `agent-notices-${String(noticeMs)}`,
          env: { SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: String(STALL_TIMEOUT_MS) },
        },
      ],
      seedEnv: { SHOAL_SEED_INTAKE_NOTICE_MS: String(noticeMs) },
      registry: { registry, image },
      upstreamUrl: proxy.url,
    });
    try {
      const [agent] = cluster.agents;
      assert.ok(agent !== undefined);
      const before = proxy.counts().bytes;
      proxy.set(fault);
      const started = Date.now();
      const outcomes = await pullBlobs(agent, cluster, repository).finally(() =>
        proxy.set(undefined),
      );
      t.diagnostic(`pulled in ${String(Date.now() - started)} ms`);
      assert.deepEqual(
        outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
        image.blobs.map((blob) => ({ digest: blob.digest, error: undefined })),
      );
      const sources = await bytesBySource(agent);
      return {
        origin: sources.origin,
        seed: sources.seed,
        stalls: await agent.metric('shoal_agent_swarm_fallbacks_total', { reason: 'stall' }),
        sent: await cluster.seed.metric('shoal_seedserver_intake_notices_total', {
          while: 'receiving',
        }),
        waited: await cluster.seed.metric('shoal_seedserver_intake_notices_total', {
          while: 'waiting',
        }),
        heard: await agent.metric('shoal_agent_events_received_total', { type: 'seed-intake' }),
        originSent: proxy.counts().bytes - before,
      };
    } finally {
      await cluster.stop();
    }
  }

  /** Bytes of every blob of the image. */
  const total = (): number => image.blobs.reduce((sum, blob) => sum + blob.size, 0);

  /** Every byte from the seed, the origin sent the blobs once; `told` notices, all heard. */
  function swarmOnly(figures: PullFigures, told: number): void {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    assert.equal(figures.stalls, 0, 'no download stalled');
    assert.equal(figures.origin, 0, 'nothing from the origin');
    assert.ok(figures.seed >= layer.size, `the layer came from the seed (${String(figures.seed)})`);
    assert.ok(told >= 2, `the seed sent notices (${String(told)})`);
    assert.ok(figures.heard >= 2, `the agent heard them (${String(figures.heard)})`);
    assert.ok(
      figures.originSent < 1.2 * total(),
      `the origin sent ${String(figures.originSent)} bytes for ${String(total())} bytes of blobs`,
    );
  }

  /**
   * No notice from the looks; a download stalled and read from the origin, beside the seed:
   * the whole layer (the origin sending the blobs twice), or with `rest`, what the seed had
   * not hashed yet (the origin sending that part twice). With `rest` the seed tells of the
   * break once, at once, whatever its looks: one notice that leaves a wait of three stall
   * timeouts untold.
   */
  function originTwice(figures: PullFigures, rest = false): void {
    const layer = image.layers[0];
    assert.ok(layer !== undefined);
    const atBreak = rest ? 1 : 0;
    assert.equal(figures.sent, 0);
    assert.equal(figures.waited, atBreak);
    assert.ok(figures.heard <= atBreak, `the agent heard ${String(figures.heard)}`);
    assert.ok(figures.stalls >= 1, 'a download stalled');
    assert.ok(
      rest ? figures.origin > 0 : figures.origin >= layer.size,
      `and read ${rest ? 'the rest' : 'the layer'} from the origin (${String(figures.origin)})`,
    );
    assert.ok(
      figures.originSent > (rest ? 1.4 : 1.5) * total(),
      `the origin sent ${String(figures.originSent)} bytes for ${String(total())} bytes of blobs`,
    );
  }

  it('per piece: keeps the agent in the swarm while the seed tells it the bytes keep coming', async (t) => {
    const figures = await pull(t, 250, slowLink);
    t.diagnostic(JSON.stringify(figures));
    swarmOnly(figures, figures.sent);
  });

  it('per piece, without notices: the same pull stalled and read the layer from the origin beside the seed', async (t) => {
    // The seed looks only after the pull is over: no notice while the blob comes in.
    const figures = await pull(t, 600_000, slowLink);
    t.diagnostic(JSON.stringify(figures));
    originTwice(figures);
  });

  /**
   * Every GET waits three stall timeouts before the registry sees it, then goes at full speed;
   * a HEAD (the agent checking a client's access) is answered at once.
   */
  const slowAnswer: RegistryFault = {
    kind: 'slow',
    delayMs: 3 * STALL_TIMEOUT_MS,
    rateBytes: Infinity,
    methods: ['GET'],
  };

  it('to answer: keeps the agent in the swarm while the seed tells it how long it has waited', async (t) => {
    const figures = await pull(t, 250, slowAnswer);
    t.diagnostic(JSON.stringify(figures));
    swarmOnly(figures, figures.waited);
  });

  it('to answer, without notices: the same pull stalled and asked the origin beside the seed', async (t) => {
    const figures = await pull(t, 600_000, slowAnswer);
    t.diagnostic(JSON.stringify(figures));
    originTwice(figures);
  });

  /**
   * Every blob transfer breaks off after its first 300 000 bytes (past the first piece), and
   * the request for the rest waits three stall timeouts before the registry sees it.
   */
  const brokenOff: RegistryFault = {
    kind: 'damage',
    how: 'cut',
    atByte: 300_000,
    resumeDelayMs: 3 * STALL_TIMEOUT_MS,
  };

  it('to answer the rest of a transfer that broke off: keeps the agent in the swarm while the seed tells it how long it has waited', async (t) => {
    const figures = await pull(t, 250, brokenOff);
    t.diagnostic(JSON.stringify(figures));
    swarmOnly(figures, figures.waited);
  });

  it('to answer the rest, without notices: the same pull stalled and read the rest from the origin beside the seed', async (t) => {
    const figures = await pull(t, 600_000, brokenOff);
    t.diagnostic(JSON.stringify(figures));
    originTwice(figures, true);
  });
});
