/**
 * Wants of a warm pull against a real nats-server and a real piece server: the blob's piece
 * hashes are stored already, and the tracker (played by the test: it answers each want with a
 * hand-out naming the holder) names a holder. The stored hashes arrive before that hand-out
 * and must not send a second want (a 4-blob warm pull sent 6-7 wants where 4 were enough).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import {
  digestOf,
  encodeMessage,
  handout,
  handoutSubject,
  pieceHashes,
  pieceHashesSubject,
  piecePath,
  pieceWantSubject,
  STREAMS,
} from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import {
  startJetStream,
  startSwarmClient,
  swarmFetchNoOrigin,
  type JetStreamFixture,
} from './jetstream-fixture.js';

const SELF = { id: 'agent-wants', url: 'http://127.0.0.1:65005' };
// The piece size a blob under 64 MiB has (`pieceSizeFor`).
const PIECE_BYTES = 256 * 1024;
/**
 * How long the tracker takes to answer a want, in ms: a few, as a real one on the same
 * network; well under the 50 ms between early wants (sent while hashes are known but no
 * hand-out has named a holder), which are not what this test counts.
 */
const TRACKER_MS = 10;

describe('SwarmFetch wants on a warm pull', () => {
  let fixture: JetStreamFixture;
  let root: string;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces]);
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-wants-'));
  });

  after(async () => {
    await fixture.close();
    await rm(root, { recursive: true, force: true });
  });

  it('sends one want when the hashes are stored and the hand-out names a holder', async () => {
    const content = Buffer.alloc(2 * PIECE_BYTES, 7);
    content.write('a warm blob');
    const digest = digestOf(content);
    const blob = digest.toString();
    const pieces = [content.subarray(0, PIECE_BYTES), content.subarray(PIECE_BYTES)];
    // The holder: serves the blob's pieces.
    const holder = createServer((req, res) => {
      const index = pieces.findIndex((_, i) => req.url === piecePath(blob, i));
      const piece = pieces[index];
      if (piece === undefined) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-length': piece.length }).end(piece);
    });
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const holderUrl = `http://127.0.0.1:${(holder.address() as AddressInfo).port}`;
    // The stored hashes, as a seed server that ingested the blob earlier left them.
    await fixture.js.publish(
      pieceHashesSubject(blob),
      encodeMessage(pieceHashes, {
        type: 'piece-hashes',
        blob,
        size: content.length,
        pieceSize: PIECE_BYTES,
        first: 0,
        hashes: pieces.map((p) => createHash('sha256').update(p).digest('hex')),
      }),
    );
    const { nc } = fixture;
    let wants = 0;
    const tracker = nc.subscribe(pieceWantSubject(blob, SELF.id), {
      callback: () => {
        wants += 1;
        setTimeout(() => {
          nc.publish(
            handoutSubject(SELF.id),
            encodeMessage(handout, {
              type: 'handout',
              blob,
              peers: [
                {
                  peer: { id: 'holder', url: holderUrl },
                  pieces: [],
                  complete: true,
                  seed: false,
                },
              ],
            }),
          );
        }, TRACKER_MS);
      },
    });
    await nc.flush();
    const { client, logger, metrics } = startSwarmClient(fixture, SELF, true);
    const store = new FsContentStore(join(root, 'store'), 4 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(PIECE_BYTES);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const fetch = swarmFetchNoOrigin(
      download,
      'library/warm',
      { client, store, pool, metrics, logger },
      { concurrency: 4, stallTimeoutMs: 10_000, wantIntervalMs: 60_000 },
    );
    try {
      await fetch.run(new AbortController().signal);
      assert.equal(download.state, 'verified', 'the blob came from the holder');
      const fetched = await metrics.fetchedBytes.get();
      assert.deepEqual(
        fetched.values.map((v) => [v.labels.source, v.value]),
        [['peer', content.length]],
      );
      await nc.flush();
      assert.equal(wants, 1, 'one want: the stored hashes added none');
    } finally {
      tracker.unsubscribe();
      await client.close();
      await new Promise((resolve) => holder.close(resolve));
    }
  });
});
