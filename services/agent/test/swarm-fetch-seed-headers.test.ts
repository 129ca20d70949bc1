/**
 * What a swarm fetch tells the pieces' servers about itself: every piece request names the
 * asking agent (`shoal-peer`), and requests to the seed server also name the peers this agent
 * could not get pieces from (`shoal-not-from`), so that the seed's rationing does not count
 * against it the copies those peers got. A real nats-server (piece hashes, a hand-out), real
 * piece servers (the agent's own handler) recording the headers they receive, a peer
 * handed out at an address where nothing listens (a node gone for good), and one that sends
 * corrupted pieces. A fetch whose want no tracker answers tells the seed server so
 * (`shoal-unheard`), and a seed that rations every piece to others serves it; one whose
 * wants are answered never does. A fetch that starves (nothing came for a while, the seed
 * refusing what it lacks) says so to the seed (`shoal-starved`), one piece at a time.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import fastify from 'fastify';
import {
  encodeMessage,
  handout,
  handoutSubject,
  parseDigest,
  encodePieceBitmap,
  PIECE_NOT_FROM_HEADER,
  PIECE_PEER_HEADER,
  PIECE_RATIONED_HEADER,
  PIECE_STARVED_HEADER,
  PIECE_UNHEARD_HEADER,
  pieceWantSubject,
  STREAMS,
} from '@shoal/proto';
import { Teardown } from '@shoal/testkit';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import type { SwarmClient } from '../src/swarm/client.js';
import type { SwarmFetch } from '../src/swarm/swarm-fetch.js';
import { blobDigest, publishHashes, servePieces } from './blob-pieces.js';
import {
  startJetStream,
  startSwarmClient,
  swarmFetchNoOrigin,
  type JetStreamFixture,
} from './jetstream-fixture.js';

const SELF = { id: 'agent-asking', url: 'http://127.0.0.1:65002' };
/** Eight pieces of 256 KiB. */
const BLOB_BYTES = 2 * 1024 * 1024;

interface SeenRequest {
  readonly index: number;
  readonly peer: string | undefined;
  readonly notFrom: string | undefined;
  readonly unheard: string | undefined;
  readonly starved: string | undefined;
  /** When it came, in ms since the recorder was made. */
  readonly atMs: number;
}

/** A port on 127.0.0.1 nothing listens on (taken, then freed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A recorder of the piece requests a server received, by piece index. */
function recorder(): {
  seen: SeenRequest[];
  record: (url: string, headers: Record<string, string | string[] | undefined>) => void;
} {
  const seen: SeenRequest[] = [];
  const start = performance.now();
  return {
    seen,
    record: (url, headers) => {
      const header = (name: string): string | undefined => {
        const value = headers[name];
        return Array.isArray(value) ? value.join(',') : value;
      };
      seen.push({
        index: Number(url.split('/').at(-1)),
        peer: header(PIECE_PEER_HEADER),
        notFrom: header(PIECE_NOT_FROM_HEADER),
        unheard: header(PIECE_UNHEARD_HEADER),
        starved: header(PIECE_STARVED_HEADER),
        atMs: performance.now() - start,
      });
    },
  };
}

describe('piece request headers of a swarm fetch', () => {
  const teardown = new Teardown();
  let fixture: JetStreamFixture;
  let root: string;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces, STREAMS.wants]);
    teardown.add('nats', () => fixture.close());
    root = await mkdtemp(join(tmpdir(), 'shoal-seed-headers-'));
    teardown.add('root', () => rm(root, { recursive: true, force: true }));
  });

  after(() => teardown.run());

  it('names the agent to every server, and to the seed server the peers it cannot get pieces from', async () => {
    const blob = Buffer.alloc(BLOB_BYTES);
    for (let i = 0; i < blob.length; i += 4096) {
      blob.writeUInt32BE(i, i);
    }
    const seedSeen = recorder();
    const peerSeen = recorder();
    const seed = await servePieces(blob, seedSeen.record);
    teardown.add('seed', () => seed.server.close());
    const peer = await servePieces(blob, peerSeen.record);
    teardown.add('peer', () => peer.server.close());
    // A peer that corrupts every piece it sends (it serves other bytes than the hashes say).
    const corrupted = Buffer.from(blob);
    for (let i = 0; i < corrupted.length; i += 4096) {
      corrupted[i] = (corrupted[i] ?? 0) ^ 0xff;
    }
    const badSeen = recorder();
    const bad = await servePieces(corrupted, badSeen.record);
    teardown.add('bad peer', () => bad.server.close());
    const gonePort = await closedPort();

    const { client, logger, metrics } = startSwarmClient(fixture, SELF, false);
    teardown.add('swarm client', () => client.close());
    const store = new FsContentStore(join(root, 'store'), 16 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(1024 * 1024);
    const digest = parseDigest(blobDigest(blob));
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const fetch = swarmFetchNoOrigin(
      download,
      'team/seed-headers',
      { client, store, pool, metrics, logger },
      { concurrency: 4, stallTimeoutMs: 10_000, wantIntervalMs: 60_000 },
    );
    const count = await publishHashes(fixture.js, blob);
    assert.equal(count, 8);
    const running = fetch.run(new AbortController().signal);
    // The gone peer holds every piece, the live one the first half, the seed server all.
    fixture.nc.publish(
      handoutSubject(SELF.id),
      encodeMessage(handout, {
        type: 'handout',
        blob: digest.toString(),
        peers: [
          {
            peer: { id: 'agent-gone', url: `http://127.0.0.1:${gonePort}` },
            pieces: [[0, count]],
            complete: true,
            seed: false,
          },
          {
            peer: { id: 'agent-bad', url: bad.url },
            pieces: [[0, count]],
            complete: true,
            seed: false,
          },
          {
            peer: { id: 'agent-live', url: peer.url },
            pieces: [[0, count / 2]],
            complete: false,
            seed: false,
          },
          {
            peer: { id: 'seed-a', url: seed.url },
            pieces: [[0, count]],
            complete: true,
            seed: true,
          },
        ],
      }),
    );
    await running;
    assert.equal(download.state, 'verified', String(download.error));

    // Every request, to a peer or the seed, says who asks.
    const all = [...seedSeen.seen, ...peerSeen.seen, ...badSeen.seen];
    assert.ok(badSeen.seen.length >= 1, 'the corrupting peer was asked');
    assert.ok(all.length >= count, `${all.length} requests for ${count} pieces`);
    assert.deepEqual(
      all.filter((r) => r.peer !== SELF.id),
      [],
      'every request names the asking agent',
    );
    // Only the seed server is told of peers this agent cannot get pieces from.
    assert.deepEqual(
      [...peerSeen.seen, ...badSeen.seen].filter((r) => r.notFrom !== undefined),
      [],
      'a peer is not told',
    );
    // The second half is held by the gone peer, the corrupting one and the seed only: once
    // the gone peer refused a connection and the other sent a bad piece, the seed's requests
    // name them.
    const naming = (id: string): SeenRequest[] =>
      seedSeen.seen.filter((r) => r.notFrom?.split(',').includes(id));
    const seen = JSON.stringify(seedSeen.seen);
    assert.ok(naming('agent-gone').length >= 1, `a seed request names the gone peer: ${seen}`);
    assert.ok(naming('agent-bad').length >= 1, `one names the corrupting peer: ${seen}`);
    assert.deepEqual(
      seedSeen.seen.filter((r) =>
        r.notFrom?.split(',').some((id) => id !== 'agent-gone' && id !== 'agent-bad'),
      ),
      [],
      'and names no peer that answered well',
    );
    // Its NATS publishes went through and it was done before its want could count as unanswered.
    assert.deepEqual(
      all.filter((r) => r.unheard !== undefined),
      [],
      'nobody is told the swarm does not hear it',
    );
  });

  /** A blob of eight 256 KiB pieces, distinct per `salt`. */
  function makeBlob(salt: number): Buffer {
    const blob = Buffer.alloc(BLOB_BYTES);
    for (let i = 0; i < blob.length; i += 4096) {
      blob.writeUInt32BE((i ^ salt) >>> 0, i);
    }
    return blob;
  }

  /**
   * A seed server that has sent every piece to other agents: its fan-out rationing refuses
   * the agents the swarm hears and, with `servesUnheard`, serves one that says the swarm
   * does not hear it (a seed with every upload slot taken refuses it too).
   */
  async function rationingSeed(
    blob: Buffer,
    servesUnheard: boolean,
  ): Promise<{ url: string; seen: SeenRequest[] }> {
    const seen = recorder();
    const seed = await servePieces(blob, seen.record, (_source, _index, ask) =>
      servesUnheard && ask.unheard ? { end: () => undefined } : undefined,
    );
    teardown.add('rationing seed', () => seed.server.close());
    return { url: seed.url, seen: seen.seen };
  }

  /** A swarm fetch of `blob` by a client of its own, with no origin to fall back on. */
  async function startFetch(
    blob: Buffer,
    name: string,
    stallTimeoutMs: number,
  ): Promise<{ download: BlobDownload; fetch: SwarmFetch; client: SwarmClient; count: number }> {
    const { client, logger, metrics } = startSwarmClient(fixture, SELF, false);
    teardown.add(`swarm client of ${name}`, () => client.close());
    const store = new FsContentStore(join(root, name), 16 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(1024 * 1024);
    const download = new BlobDownload(
      parseDigest(blobDigest(blob)),
      await store.createTemp(),
      pool,
    );
    const fetch = swarmFetchNoOrigin(
      download,
      `team/${name}`,
      { client, store, pool, metrics, logger },
      { concurrency: 4, stallTimeoutMs, wantIntervalMs: 300 },
    );
    const count = await publishHashes(fixture.js, blob);
    return { download, fetch, client, count };
  }

  /**
   * A hand-out naming the seed (it holds every piece), a peer that holds none yet (the one
   * the seed sent them to, as far as this agent can tell) and, when given, `holder`, which
   * holds every piece.
   */
  function handoutOf(blob: Buffer, count: number, seedUrl: string, holder?: string): Uint8Array {
    return encodeMessage(handout, {
      type: 'handout',
      blob: blobDigest(blob),
      peers: [
        {
          peer: { id: 'agent-other', url: holder ?? 'http://127.0.0.1:9' },
          pieces: holder === undefined ? [] : [[0, count]],
          complete: holder !== undefined,
          seed: false,
        },
        { peer: { id: 'seed-a', url: seedUrl }, pieces: [[0, count]], complete: true, seed: true },
      ],
    });
  }

  it('tells the seed server once its want has gone unanswered for four seconds, and gets what the seed refused', async (t) => {
    const blob = makeBlob(0x5a5a);
    const seed = await rationingSeed(blob, true);
    // No tracker reads the wants stream: the wants are stored, and only the first is
    // answered, by the tracker's last hand-out before it stopped reading them.
    const { download, fetch, client, count } = await startFetch(blob, 'unanswered', 20_000);
    const started = performance.now();
    const running = fetch.run(new AbortController().signal);
    fixture.nc.publish(handoutSubject(SELF.id), handoutOf(blob, count, seed.url));
    await running;
    const tookMs = performance.now() - started;
    assert.equal(download.state, 'verified', String(download.error));
    assert.equal(client.unheard, false, "the client's own publishes went through");

    const seen = JSON.stringify(seed.seen);
    const refused = seed.seen.filter((r) => r.unheard === undefined);
    const told = seed.seen.filter((r) => r.unheard === '1');
    assert.ok(refused.length >= 1, `asked before its want counted as unanswered: ${seen}`);
    assert.equal(refused.length + told.length, seed.seen.length, seen);
    // Every piece came from the seed, each asked for with the header.
    assert.deepEqual(
      [...new Set(told.map((r) => r.index))].sort((a, b) => a - b),
      [...Array(count).keys()],
      seen,
    );
    // Not told before four seconds, and never left out once told.
    const firstTold = Math.min(...told.map((r) => r.atMs));
    assert.ok(firstTold >= 3_900, `told after ${firstTold} ms`);
    assert.ok(
      refused.every((r) => r.atMs < firstTold),
      `no request without it after the first with it: ${seen}`,
    );
    // Done from the seed in seconds, far from the stall timeout (the origin is not asked).
    t.diagnostic(
      `first told the seed after ${firstTold.toFixed(0)} ms; done in ${tookMs.toFixed(0)} ms`,
    );
    assert.ok(tookMs < 10_000, `${tookMs} ms`);
  });

  /**
   * Runs `fetch` against a tracker that answers every want at once with a hand-out naming the
   * seed and the agent the seed sent the pieces to (`holderUrl`), which holds them from
   * `announceMs` after the start (it announces them then, and the tracker pushes a hand-out
   * naming it). Resolves with the wants answered and the fetch's time in ms.
   */
  async function runWithHolderAnnounced(
    fetch: SwarmFetch,
    blob: Buffer,
    count: number,
    seedUrl: string,
    holderUrl: string,
    announceMs: number,
  ): Promise<{ wants: number; tookMs: number }> {
    const started = performance.now();
    // Set by the timer that pushes the hand-out, so that the push names the holder.
    let announced = false;
    const named = (): Uint8Array =>
      handoutOf(blob, count, seedUrl, announced ? holderUrl : undefined);
    const push = setTimeout(() => {
      announced = true;
      fixture.nc.publish(handoutSubject(SELF.id), named());
    }, announceMs);
    let wants = 0;
    const tracker = fixture.nc.subscribe(pieceWantSubject(blobDigest(blob), SELF.id), {
      callback: () => {
        wants += 1;
        fixture.nc.publish(handoutSubject(SELF.id), named());
      },
    });
    try {
      await fetch.run(new AbortController().signal);
    } finally {
      clearTimeout(push);
      tracker.unsubscribe();
    }
    return { wants, tookMs: performance.now() - started };
  }

  it('never tells the seed while a tracker answers its wants, however long the seed refuses', async () => {
    const blob = makeBlob(0x1234);
    const seed = await rationingSeed(blob, true);
    const holder = await servePieces(blob);
    teardown.add('holder', () => holder.server.close());
    const { download, fetch, count } = await startFetch(blob, 'answered', 20_000);
    // The agent the seed sent the pieces to announces them only after five seconds.
    const { wants, tookMs } = await runWithHolderAnnounced(
      fetch,
      blob,
      count,
      seed.url,
      holder.url,
      5_000,
    );
    assert.equal(download.state, 'verified', String(download.error));
    assert.ok(tookMs >= 5_000);
    assert.ok(wants >= 3, `${wants} wants answered`);
    const seen = JSON.stringify(seed.seen);
    assert.ok(seed.seen.length >= 2, `the seed was asked: ${seen}`);
    assert.deepEqual(
      seed.seen.filter((r) => r.unheard !== undefined),
      [],
      'every want answered: the seed is never told',
    );
  });

  it('leaves to its peers every piece a refusal says the seed refuses, not asking for them one by one', async () => {
    const blob = makeBlob(0x6b6b);
    // The seed sent pieces 0 to 5 to another agent and says so with each refusal; it serves
    // pieces 6 and 7.
    const rationed = [0, 1, 2, 3, 4, 5];
    const seen = recorder();
    const seed = await servePieces(
      blob,
      seen.record,
      (_source, index) => (rationed.includes(index) ? undefined : { end: () => undefined }),
      () => ({ [PIECE_RATIONED_HEADER]: encodePieceBitmap(rationed) }),
    );
    teardown.add('hinting seed', () => seed.server.close());
    const holder = await servePieces(blob);
    teardown.add('holder', () => holder.server.close());
    const { download, fetch, count } = await startFetch(blob, 'hinted', 20_000);
    // The agent the seed sent pieces 0 to 5 to announces them after a second and a half.
    await runWithHolderAnnounced(fetch, blob, count, seed.url, holder.url, 1_500);
    assert.equal(download.state, 'verified', String(download.error));
    const log = JSON.stringify(seen.seen);
    const refused = seen.seen.filter((r) => rationed.includes(r.index));
    assert.ok(refused.length >= 1, `the seed refused a piece: ${log}`);
    // Until the first deferral (750 ms) after the first refusal, the seed is asked for no
    // rationed piece but those asked before that refusal came back: at most the two requests
    // a download has in flight to a seed while a peer may serve, and one a starved download
    // makes whatever the deferrals. Without the header it is asked for each of the six in
    // turn, a refusal each.
    const first = Math.min(...refused.map((r) => r.atMs));
    const early = refused.filter((r) => r.atMs < first + 600);
    assert.ok(early.length <= 3, `${early.length} refusals in the first 600 ms: ${log}`);
  });

  it('names to the seed a peer that no longer holds what it was handed out for (404), and gets the pieces the seed sent it', async (t) => {
    const blob = makeBlob(0x4040);
    // The seed sent every piece to agent-lost, whose download then failed (a full disk): its
    // rationing refuses anyone who does not say agent-lost cannot serve them.
    const seedSeen = recorder();
    const seed = await servePieces(blob, seedSeen.record, (_source, _index, ask) =>
      ask.notFrom.includes('agent-lost') ? { end: () => undefined } : undefined,
    );
    teardown.add('seed of the lost peer', () => seed.server.close());
    // agent-lost answers 404 for every piece: it holds nothing any more.
    const lostSeen = recorder();
    const lost = fastify();
    lost.addHook('onRequest', (request, _reply, done) => {
      lostSeen.record(request.url, request.headers);
      done();
    });
    lost.get('/*', async (_request, reply) => reply.code(404).send({ errors: [] }));
    const lostUrl = await lost.listen({ host: '127.0.0.1', port: 0 });
    teardown.add('lost peer', () => lost.close());
    const { download, fetch, count } = await startFetch(blob, 'lost-holder', 20_000);
    // A tracker that answers every want, naming agent-lost as holding every piece (its have
    // was applied before its download failed) and the seed.
    const lostHandout = encodeMessage(handout, {
      type: 'handout',
      blob: blobDigest(blob),
      peers: [
        {
          peer: { id: 'agent-lost', url: lostUrl },
          pieces: [[0, count]],
          complete: true,
          seed: false,
        },
        { peer: { id: 'seed-a', url: seed.url }, pieces: [[0, count]], complete: true, seed: true },
      ],
    });
    const tracker = fixture.nc.subscribe(pieceWantSubject(blobDigest(blob), SELF.id), {
      callback: () => fixture.nc.publish(handoutSubject(SELF.id), lostHandout),
    });
    const started = performance.now();
    try {
      await fetch.run(new AbortController().signal);
    } finally {
      tracker.unsubscribe();
    }
    const tookMs = performance.now() - started;
    assert.equal(download.state, 'verified', String(download.error));
    const seen = JSON.stringify(seedSeen.seen);
    assert.ok(lostSeen.seen.length >= 1, 'the lost peer was asked');
    const naming = seedSeen.seen.filter((r) => r.notFrom?.split(',').includes('agent-lost'));
    // Every piece came from the seed with the header, none of it the unheard exemption.
    assert.deepEqual(
      [...new Set(naming.map((r) => r.index))].sort((a, b) => a - b),
      [...Array(count).keys()],
      seen,
    );
    assert.deepEqual(
      seedSeen.seen.filter((r) => r.unheard !== undefined),
      [],
      'its wants were answered: the seed is not told it is unheard',
    );
    t.diagnostic(`done in ${tookMs.toFixed(0)} ms, ${seedSeen.seen.length} seed requests`);
    // Well before a want could count as unanswered (4 s), let alone the stall timeout.
    assert.ok(tookMs < 3_500, `${tookMs} ms`);
  });

  it('tells the seed server once nothing came for a second, and gets from it, one piece at a time, what it had handed to a node that does not pass it on', async (t) => {
    const blob = makeBlob(0x5151);
    // The seed sent every piece but the first to agent-other, a slow node still receiving
    // them: it refuses an asker unless it says it starved with a lateness shorter than those
    // copies have been out (here: since before the fetch began, so any lateness will do).
    const seedSeen = recorder();
    let inFlight = 0;
    let most = 0;
    const seed = await servePieces(blob, seedSeen.record, (_source, index, ask) => {
      if (ask.starvedLateMs === undefined) {
        return index === 0 ? { end: () => undefined } : undefined;
      }
      inFlight += 1;
      most = Math.max(most, inFlight);
      return { end: () => (inFlight -= 1) };
    });
    teardown.add('seed of the slow node', () => seed.server.close());
    const { download, fetch, client, count } = await startFetch(blob, 'starved', 20_000);
    // A tracker that answers every want: the seed, and agent-other holding nothing yet.
    const tracker = fixture.nc.subscribe(pieceWantSubject(blobDigest(blob), SELF.id), {
      callback: () => fixture.nc.publish(handoutSubject(SELF.id), handoutOf(blob, count, seed.url)),
    });
    const started = performance.now();
    try {
      fixture.nc.publish(handoutSubject(SELF.id), handoutOf(blob, count, seed.url));
      await fetch.run(new AbortController().signal);
    } finally {
      tracker.unsubscribe();
    }
    const tookMs = performance.now() - started;
    assert.equal(download.state, 'verified', String(download.error));
    assert.equal(client.unheard, false);
    const seen = JSON.stringify(seedSeen.seen);
    const told = seedSeen.seen.filter((r) => r.starved !== undefined);
    // The first piece came at once; every other came from the seed with the header, none by
    // the unheard exemption.
    assert.deepEqual(
      [...new Set(told.map((r) => r.index))].sort((a, b) => a - b),
      [...Array(count).keys()].slice(1),
      seen,
    );
    assert.deepEqual(
      seedSeen.seen.filter((r) => r.unheard !== undefined),
      [],
      seen,
    );
    // Told only a second after the first piece (nothing in flight: the least lateness), and
    // saying its lateness (the least too: pieces here take milliseconds).
    const first = told.reduce((a, b) => (a.atMs <= b.atMs ? a : b));
    const piece0 = seedSeen.seen.find((r) => r.index === 0 && r.starved === undefined);
    assert.ok(piece0 !== undefined, seen);
    assert.ok(first.atMs - piece0.atMs >= 990, seen);
    assert.equal(first.starved, '1000', seen);
    assert.equal(most, 1, 'one such request at a time');
    t.diagnostic(`done in ${tookMs.toFixed(0)} ms, ${seedSeen.seen.length} seed requests`);
    // Well before a want could count as unanswered (4 s), let alone the stall timeout.
    assert.ok(tookMs < 3_500, `${tookMs} ms`);
  });

  it('backs off a seed that refuses it although told (every slot taken), not asking in a loop', async (t) => {
    const blob = makeBlob(0x7777);
    const seed = await rationingSeed(blob, false);
    const { download, fetch, count } = await startFetch(blob, 'refused', 7_000);
    const running = fetch.run(new AbortController().signal);
    fixture.nc.publish(handoutSubject(SELF.id), handoutOf(blob, count, seed.url));
    await running;
    // Nothing to be had: the swarm stalls (and with no origin here, the download fails).
    assert.equal(download.state, 'failed');
    const told = seed.seen.filter((r) => r.unheard === '1');
    const seen = JSON.stringify(seed.seen);
    assert.ok(told.length >= count, `told the seed for each piece: ${seen}`);
    // Each refusal defers its piece (750 ms, doubling): a few dozen requests in three seconds,
    // where asking again on each refusal would have been thousands.
    t.diagnostic(`${told.length} requests told the seed`);
    assert.ok(told.length <= 80, `${told.length} requests told`);
  });
});
