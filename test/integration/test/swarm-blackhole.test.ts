/**
 * Hosts that vanish without a word mid-pull: every packet to and from them dropped (iptables
 * in their own network namespace), no RST, no FIN, as a node powered off, a partition or a
 * firewall change does. The registry, NATS with the tracker, the seed server and four nodes
 * (containerd and an agent each) each on a namespace of its own, joined by a bridge, every
 * link shaped to 40 Mbit/s so that a pull lasts seconds.
 *
 * - A peer holding the image vanishes while a node pulls from it and the seed server: the
 *   pull stops waiting on it within seconds (the source's silence while answering), not after
 *   the 15 s idle timeout per request.
 * - The tracker still names the vanished peer (its haves count until they age out): a later
 *   pull pays one connect timeout (3 s) for it, not the idle timeout.
 * - The seed server vanishes during a cold pull (no peer holds anything yet): the agent reads
 *   the rest from the origin once the stall timeout passes.
 * - The registry vanishes while the seed server reads a blob from it: the pull fails in bounded
 *   time (the agent's own origin read has its timeouts), and works once the registry is back.
 * - NATS (and the tracker) vanish: pulls go on from the origin, the agents notice by their
 *   unanswered pings and connect anew once NATS is back, and the swarm serves again.
 * Needs root (network namespaces and iptables), as the machines that run this suite have.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import {
  FAST_SWARM_ENV,
  generateImage,
  makeTempDir,
  NetLab,
  pushImage,
  scrapeMetrics,
  startAgent,
  startContainerd,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  Teardown,
  waitFor,
  type AgentProcess,
  type Containerd,
  type LabHost,
  type Registry,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';

const shape = { mbit: 40, delayMs: 0, lossPct: 0 };
/** The agents' stall timeout (FAST_SWARM_ENV). */
const STALL_TIMEOUT_MS = Number(FAST_SWARM_ENV.SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS);
/** The agents' NATS pings, in ms (10 s by default): a silent server is noticed in 4-6 s. */
const NATS_PING_INTERVAL_MS = 2_000;
/** The agents' piece idle timeout (the default): what a vanished source cost before. */
const IDLE_TIMEOUT_MS = 15_000;
/**
 * The agents' own origin reads: connect and headers timeouts (10 s and 30 s by default), lower
 * here so that the pull that fails while the registry is gone fails sooner (it is bounded by
 * these either way; containerd's own try of the registry adds its dial timeout).
 */
const UPSTREAM_CONNECT_TIMEOUT_MS = 1_500;
const UPSTREAM_HEADERS_TIMEOUT_MS = 1_500;

interface Node {
  readonly host: LabHost;
  readonly containerd: Containerd;
  readonly agent: AgentProcess;
}

/** Bytes the agent fetched from `source` (peer, seed, origin). */
async function fetched(node: Node, source: string): Promise<number> {
  const metrics = await scrapeMetrics(node.agent.url);
  return metrics.get('shoal_agent_fetched_bytes_total', { source });
}

/** Piece requests to `source` (peer, seed) the agent gave up (failed). */
async function failedPieces(node: Node, source: string): Promise<number> {
  const metrics = await scrapeMetrics(node.agent.url);
  return metrics.get('shoal_agent_pieces_total', { source, result: 'failed' });
}

/**
 * Ms until `node` gives up a piece request to a peer (polled), or undefined once its pull
 * `ended` (its requests were then dropped, not given up) or by `deadline`.
 */
async function untilPeerGivenUp(
  node: Node,
  ended: () => boolean,
  deadline: number,
): Promise<number | undefined> {
  const started = Date.now();
  const before = await failedPieces(node, 'peer');
  while (Date.now() < deadline && !ended()) {
    if ((await failedPieces(node, 'peer')) > before) {
      return Date.now() - started;
    }
    await sleep(100);
  }
  return undefined;
}

/** Times the agent gave a `source` (peer, seed) up as silent. */
async function silenced(node: Node, source: string): Promise<number> {
  const metrics = await scrapeMetrics(node.agent.url);
  return metrics.get('shoal_agent_piece_sources_silent_total', { source });
}

/**
 * True when the last word of the log at `path` past `offset` on its NATS connection is that
 * it is back (a process cut off from NATS drops the connection and makes a new one).
 */
async function backOnNats(path: string, offset: number): Promise<boolean> {
  const log = (await readFile(path, 'utf8')).slice(offset);
  return (
    [...log.matchAll(/nats connection problem|nats reconnected/g)].at(-1)?.[0] ===
    'nats reconnected'
  );
}

/**
 * Pulls `ref` on `node`, running `during` once the pull is under way (told whether the pull
 * has ended yet); the pull's own time in ms.
 */
async function timedPull(
  node: Node,
  ref: string,
  during?: (ended: () => boolean) => Promise<void>,
): Promise<number> {
  const started = Date.now();
  let endedAt: number | undefined;
  const pull = node.containerd.pull(ref, { timeoutMs: 180_000 }).finally(() => {
    endedAt = Date.now();
  });
  const [, ran] = await Promise.allSettled([pull, during?.(() => endedAt !== undefined)]);
  if (ran.status === 'rejected') {
    throw ran.reason;
  }
  await pull;
  return (endedAt ?? Date.now()) - started;
}

/**
 * Resolves once `node` has fetched `bytes` more from `source` than `since` (polls its metrics);
 * throws if its pull `ended` first.
 */
async function whenFetched(
  node: Node,
  source: string,
  since: number,
  bytes: number,
  ended: () => boolean,
): Promise<void> {
  const deadline = Date.now() + 120_000;
  while ((await fetched(node, source)) - since < bytes) {
    if (Date.now() > deadline || ended()) {
      throw new Error(
        `${node.agent.peerId ?? 'agent'} never fetched ${bytes} bytes from ${source}`,
      );
    }
    await sleep(50);
  }
}

describe('hosts that vanish mid-pull (packets dropped, no RST)', () => {
  const teardown = new Teardown((what, error) => {
    process.stderr.write(`stopping ${what} failed: ${error.message}\n`);
  });
  let registry: Registry;
  let seedHost: LabHost;
  let registryHost: LabHost;
  let controlHost: LabHost;
  /** The tracker's metrics and probes (on the control host). */
  let trackerUrl: string;
  /** The seed server's log (it reconnects to NATS too). */
  let seedLog: string;
  const refs = new Map<string, string>();
  /** Each pushed image's bytes (its blobs'). */
  const imageBytes = new Map<string, number>();
  const nodes: Node[] = [];

  before(async () => {
    const lab = await NetLab.create((line) => process.stderr.write(`${line}\n`));
    teardown.add('network namespaces', () => lab.close());
    // Shaped once the images are in: pushed at the bridge's speed, not the link's.
    registryHost = await lab.addHost('reg', 1, shape, { shapeLater: true });
    const control = await lab.addHost('ctl', 2, shape);
    controlHost = control;
    seedHost = await lab.addHost('seed', 3, shape);
    registry = await startRegistry({ netns: registryHost.netns, host: registryHost.address });
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('swarm-blackhole');
    teardown.add('images', () => layout.remove());
    // The warm image is larger: its pull lasts about ten seconds, so that a peer vanishing at a
    // quarter of it is given up while the pull still runs (endgame copies from the seed server
    // end a shorter one first).
    for (const [name, layer] of [
      ['warm', 48 * MiB],
      ['cold', 24 * MiB],
      ['origin', 12 * MiB],
      ['nats', 24 * MiB],
    ] as const) {
      const image = await generateImage(join(layout.path, name), {
        layerSizes: [layer, MiB],
        seed: `swarm-blackhole-${name}`,
      });
      imageBytes.set(
        name,
        image.blobs.reduce((sum, b) => sum + b.size, 0),
      );
      refs.set(name, await pushImage(image, registry.host, `team/${name}`));
    }
    await registryHost.shapeLink();

    const placed = { netns: control.netns, host: control.address };
    const nats = await startNats(placed);
    teardown.add('nats-server', () => nats.stop());
    const tracker = await startTracker({ natsUrl: nats.url, ...placed });
    trackerUrl = tracker.url;
    teardown.add('tracker', () => tracker.stop());
    const registries = `${registry.host}=${registry.url}`;
    const seed = await startSeedServer({
      natsUrl: nats.url,
      registries,
      netns: seedHost.netns,
      host: seedHost.address,
      env: { SHOAL_NATS_PING_INTERVAL_MS: String(NATS_PING_INTERVAL_MS) },
    });
    teardown.add('seed server', () => seed.stop());
    seedLog = seed.process.logPath;
    for (const index of [1, 2, 3, 4]) {
      const host = await lab.addHost(`node${index}`, 10 + index, shape);
      const containerd = await startContainerd({ netns: host.netns });
      teardown.add(`containerd ${host.name}`, () => containerd.stop());
      const agent = await startAgent({
        registries,
        natsUrl: nats.url,
        peerId: host.name,
        netns: host.netns,
        host: host.address,
        env: {
          ...FAST_SWARM_ENV,
          SHOAL_NATS_PING_INTERVAL_MS: String(NATS_PING_INTERVAL_MS),
          SHOAL_AGENT_UPSTREAM_CONNECT_TIMEOUT_MS: String(UPSTREAM_CONNECT_TIMEOUT_MS),
          SHOAL_AGENT_UPSTREAM_HEADERS_TIMEOUT_MS: String(UPSTREAM_HEADERS_TIMEOUT_MS),
          SHOAL_AGENT_HOSTS_DIR: containerd.hostsDir,
        },
      });
      teardown.add(`agent ${host.name}`, () => agent.stop());
      nodes.push({ host, containerd, agent });
    }
  });

  after(() => teardown.run());

  /** The pushed image `name`'s bytes. */
  const bytesOf = (name: string): number => imageBytes.get(name) ?? 0;

  /** The pushed image `name`'s reference. */
  const ref = (name: string): string => {
    const found = refs.get(name);
    assert.ok(found !== undefined, name);
    return found;
  };

  it('stops waiting on a peer that vanished mid-pull within seconds', async () => {
    const [holder, baseline, puller, later] = nodes;
    assert.ok(
      holder !== undefined && baseline !== undefined && puller !== undefined && later !== undefined,
    );
    await holder.containerd.pull(ref('warm'), { timeoutMs: 180_000 });
    const holderLog = holder.agent.process.logPath;
    const holderLogFrom = (await readFile(holderLog, 'utf8')).length;
    // The same pull without the fault: from the holder and the seed server.
    const healthyMs = await timedPull(baseline, ref('warm'));
    for (const source of ['peer', 'seed']) {
      assert.equal(await silenced(baseline, source), 0, 'a healthy source is never given up');
    }
    // The baseline node would serve the next pull too: it leaves, as a node that is drained.
    await baseline.agent.stop();
    const originBefore = await registry.blobGets();

    let vanishedAt = 0;
    const startedAt = Date.now();
    let givenUpMs: number | undefined;
    try {
      const faultMs = await timedPull(puller, ref('warm'), async (ended) => {
        await whenFetched(puller, 'peer', 0, bytesOf('warm') / 4, ended);
        await holder.host.blackhole(true);
        vanishedAt = Date.now();
        // Endgame copies from the seed may finish the pull first: then nothing waits.
        givenUpMs = await untilPeerGivenUp(puller, ended, vanishedAt + IDLE_TIMEOUT_MS);
      });
      const afterMs = faultMs - (vanishedAt - startedAt);
      process.stderr.write(
        `healthy pull ${healthyMs} ms; with the peer vanishing mid-pull ${faultMs} ms (${afterMs} ms after it vanished; its requests given up after ${givenUpMs ?? 'never'} ms)\n`,
      );
      // Its requests in flight were given up within seconds (the floor, 3 s, and a look), not
      // after the idle timeout (15 s to 18.75 s), nor left hanging until the pull ended.
      assert.ok(givenUpMs !== undefined && givenUpMs < 6_000, `given up after ${givenUpMs} ms`);
      // Given up for its silence (then probed one request at a time, each probe silent too:
      // how many by the pull's end depends on when it ends, so at least once).
      assert.ok((await silenced(puller, 'peer')) >= 1, 'given up for its silence');
      // The seed server served the rest; nothing fell back to the registry.
      assert.equal(await fetched(puller, 'origin'), 0);
      assert.deepEqual((await registry.blobGets()).slice(originBefore.length), []);
      // Before, each request to the peer waited out the idle timeout (15 s to 18.75 s).
      assert.ok(
        faultMs < healthyMs + IDLE_TIMEOUT_MS - 5_000,
        `the pull took ${faultMs} ms against ${healthyMs} ms without the fault`,
      );

      // The tracker still names the vanished peer (it said no goodbye). With the puller gone
      // too, the seed server and the vanished peer are all a new pull is told of: its requests
      // to the peer fail at the connect timeout (3 s), and the seed serves the rest.
      await puller.agent.stop();
      let connectGivenUpMs: number | undefined;
      const laterMs = await timedPull(later, ref('warm'), async (ended) => {
        connectGivenUpMs = await untilPeerGivenUp(later, ended, Date.now() + IDLE_TIMEOUT_MS);
      });
      process.stderr.write(
        `a later pull while the peer is still gone: ${laterMs} ms (its connects given up after ${connectGivenUpMs ?? 'never'} ms)\n`,
      );
      assert.ok(
        connectGivenUpMs !== undefined && connectGivenUpMs < 3_000 + 3_000,
        `connects given up after ${connectGivenUpMs} ms`,
      );
      assert.ok((await silenced(later, 'peer')) >= 1, 'left alone after its connect timed out');
      assert.equal(await fetched(later, 'origin'), 0);
      assert.ok(
        laterMs < healthyMs + IDLE_TIMEOUT_MS - 5_000,
        `the later pull took ${laterMs} ms against ${healthyMs} ms without the fault`,
      );
    } finally {
      await holder.host.blackhole(false);
    }
    // Cut off, the holder lost NATS too: the next test's pull on it must not start while it
    // is still reconnecting (with NATS down a while and no peer known, a download reads the
    // origin at once).
    await waitFor('the holder back on NATS', () => backOnNats(holderLog, holderLogFrom), {
      timeoutMs: 30_000,
    });
  });

  it('fails a pull in bounded time while the registry is gone mid-read, and pulls once it is back', async () => {
    const puller = nodes[0];
    assert.ok(puller !== undefined);
    const seedBefore = await fetched(puller, 'seed');
    let vanishedAt = 0;
    let failedAfterMs = 0;
    try {
      await assert.rejects(
        timedPull(puller, ref('origin'), async (ended) => {
          // The seed server is reading the blob from the registry (cut-through) when it goes.
          await whenFetched(puller, 'seed', seedBefore, bytesOf('origin') / 8, ended);
          await registryHost.blackhole(true);
          vanishedAt = Date.now();
        }),
      );
      // Not a pull that failed for another reason before the registry went.
      assert.ok(vanishedAt > 0, 'the registry went while the seed server read the blob');
      failedAfterMs = Date.now() - vanishedAt;
      process.stderr.write(
        `pull with the registry gone mid-read failed after ${failedAfterMs} ms\n`,
      );
    } finally {
      await registryHost.blackhole(false);
    }
    // Each time containerd asks, the stall timeout, then the agent's own origin read gives up
    // at its headers timeout (on a connection kept from the manifest) or its connect timeout;
    // containerd asks four times, then tries the registry itself (its own dial timeout), and
    // fails the pull: in bounded time.
    assert.ok(failedAfterMs < 120_000, `failed ${failedAfterMs} ms after the registry went`);
    const retryMs = await timedPull(puller, ref('origin'));
    process.stderr.write(`the same pull with the registry back: ${retryMs} ms\n`);
  });

  it('reads from the origin within the stall timeout when the seed server vanishes mid-pull', async () => {
    const puller = nodes[0];
    assert.ok(puller !== undefined);
    const seedBefore = await fetched(puller, 'seed');
    const originBefore = await fetched(puller, 'origin');
    let vanishedAt = 0;
    try {
      const pullMs = await timedPull(puller, ref('cold'), async (ended) => {
        await whenFetched(puller, 'seed', seedBefore, bytesOf('cold') / 4, ended);
        await seedHost.blackhole(true);
        vanishedAt = Date.now();
      });
      const afterMs = Date.now() - vanishedAt;
      process.stderr.write(
        `cold pull ${pullMs} ms with the seed server vanishing mid-pull, ${afterMs} ms after it vanished\n`,
      );
      const fromOrigin = (await fetched(puller, 'origin')) - originBefore;
      assert.ok(fromOrigin > 0, 'the rest came from the origin');
      // The stall timeout, then the rest at the link's rate (40 Mbit/s: 5 MB/s), with room.
      const restMs = (fromOrigin / 5_000_000) * 1000;
      assert.ok(
        afterMs < STALL_TIMEOUT_MS + restMs + 6_000,
        `${afterMs} ms after the seed server vanished (${fromOrigin} bytes from the origin)`,
      );
    } finally {
      await seedHost.blackhole(false);
    }
  });

  it('serves pulls from the origin while NATS is gone, notices it by pings, and the swarm again once it is back', async () => {
    const [puller, , , next] = nodes;
    assert.ok(puller !== undefined && next !== undefined);
    const originBefore = await fetched(puller, 'origin');
    /** Piece-have events the tracker took in. */
    const havesHeard = async (): Promise<number> =>
      (await scrapeMetrics(trackerUrl)).get('shoal_tracker_events_consumed_total', {
        type: 'piece-have',
      });
    let pullMs: number;
    // The agents' and the seed server's logs: each is cut off from NATS and reconnects.
    const logPaths = [puller.agent.process.logPath, next.agent.process.logPath, seedLog];
    const logsBefore = await Promise.all(
      logPaths.map(async (path) => (await readFile(path, 'utf8')).length),
    );
    const heardBefore = await havesHeard();
    const goneAt = Date.now();
    await controlHost.blackhole(true);
    try {
      pullMs = await timedPull(puller, ref('nats'));
      // Gone for at least five pings: long enough for the agent to notice.
      await sleep(goneAt + 5 * NATS_PING_INTERVAL_MS - Date.now());
    } finally {
      await controlHost.blackhole(false);
    }
    const backAt = Date.now();
    // The agents noticed the silent server by their unanswered pings and dropped the
    // connection (before: pings every 2 min, nothing noticed), and made a new one once NATS
    // was back; so did the seed server (it may still have been redialling after its own
    // outage in the case before, then it says nothing new until it is back).
    const log = async (index: number): Promise<string> =>
      (await readFile(logPaths[index] ?? '', 'utf8')).slice(logsBefore[index]);
    for (const index of [0, 1]) {
      assert.match(
        await log(index),
        /"nats":"disconnect"/,
        `${logPaths[index]}: NATS noticed gone`,
      );
    }
    for (const [index, path] of logPaths.entries()) {
      await waitFor(
        'the agents and the seed server back on NATS',
        () => backOnNats(path, logsBefore[index] ?? 0),
        { timeoutMs: 30_000 },
      );
    }
    const reconnectedMs = Date.now() - backAt;
    const fromOrigin = (await fetched(puller, 'origin')) - originBefore;
    process.stderr.write(
      `pull with NATS gone: ${pullMs} ms, ${fromOrigin} bytes from the origin\n`,
    );
    assert.ok(fromOrigin >= bytesOf('nats') - MiB, 'the blobs came from the origin');
    // Back: the haves the puller could not send meanwhile reach the tracker over its new
    // connection (before, the old one moved again only when TCP resent, on its own backed-off
    // schedule: seconds after an outage of seconds, up to two minutes after a long one).
    await waitFor(
      'the haves made while NATS was gone',
      async () => (await havesHeard()) > heardBefore,
      {
        timeoutMs: 90_000,
      },
    );
    const resumedMs = Date.now() - backAt;
    // The next node, on its new connection too, is served by the swarm (the puller, or the
    // seed server): none of it from the origin.
    const nextOriginBefore = await fetched(next, 'origin');
    const nextMs = await timedPull(next, ref('nats'));
    process.stderr.write(
      `NATS back: the agent reconnected after ${reconnectedMs} ms, haves resumed after ${resumedMs} ms; the next pull ${nextMs} ms, ${await fetched(next, 'peer')} bytes from peers\n`,
    );
    assert.equal(await fetched(next, 'origin'), nextOriginBefore, 'none of it from the origin');
  });
});
