/**
 * What a swarm fetch tells the pieces' servers about itself: every piece request names the
 * asking agent (`shoal-peer`), and requests to the seed server also name the peers this agent
 * could not get pieces from (`shoal-not-from`), so that the seed's rationing does not count
 * against it the copies those peers got. A real nats-server (piece hashes, a hand-out), real
 * piece servers (the agent's own handler) recording the headers they receive, a peer
 * handed out at an address where nothing listens (a node gone for good), and one that sends
 * corrupted pieces.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import {
  encodeMessage,
  handout,
  handoutSubject,
  parseDigest,
  PIECE_NOT_FROM_HEADER,
  PIECE_PEER_HEADER,
  STREAMS,
} from '@shoal/proto';
import { Teardown } from '@shoal/testkit';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
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
  });
});
