import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpGet } from 'node:http';
import { after, describe, it } from 'node:test';

import Fastify, { type FastifyInstance } from 'fastify';

import { PieceBuffers } from '../src/buffers.js';
import {
  pieceHandler,
  PIECE_ROUTE,
  type PieceResult,
  type PieceRoute,
  type PieceServerOptions,
  type PieceSource,
} from '../src/server.js';

const PIECE = 64 * 1024;
const blob = randomBytes(3 * PIECE + 100);
const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
const hex = digest.slice('sha256:'.length);

/** The blob in memory, counting reads and uses. */
function memorySource(): PieceSource & { reads: number; users: number } {
  const source = {
    reads: 0,
    users: 0,
    pieceLength: (index: number) =>
      index * PIECE < blob.length ? Math.min(PIECE, blob.length - index * PIECE) : undefined,
    readPiece: (index: number, buffer: Buffer) => {
      source.reads += 1;
      blob.copy(buffer, 0, index * PIECE, index * PIECE + buffer.length);
      return Promise.resolve(buffer);
    },
    acquire: () => {
      source.users += 1;
      return true;
    },
    release: () => {
      source.users -= 1;
    },
  };
  return source;
}

interface Answer {
  status: number;
  retryAfter: string | undefined;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function get(base: string, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpGet(new URL(path, base), { headers });
    req.setTimeout(10_000, () => req.destroy(new Error('no answer in 10 s')));
    req.once('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.once('end', () =>
        resolve({
          status: response.statusCode ?? 0,
          retryAfter: response.headers['retry-after'],
          headers: response.headers,
          body: Buffer.concat(chunks),
        }),
      );
      response.once('error', reject);
    });
    req.once('error', reject);
    req.end();
  });
}

/** The `error` of a JSON answer. */
function errorOf(answer: Answer): unknown {
  return (JSON.parse(answer.body.toString()) as { error?: unknown }).error;
}

const servers: FastifyInstance[] = [];
after(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

async function serve(
  options: Partial<PieceServerOptions> & Pick<PieceServerOptions, 'source'>,
): Promise<{ base: string; results: PieceResult[] }> {
  const results: PieceResult[] = [];
  const handler = pieceHandler({
    buffers: new PieceBuffers(1024 * 1024),
    uploadLimit: { take: () => Promise.resolve() },
    uploads: { max: 8, timeoutMs: 10_000 },
    onResult: (result) => results.push(result),
    ...options,
  });
  const app = Fastify();
  app.get<PieceRoute>(PIECE_ROUTE, (request, reply) => handler(request, reply));
  servers.push(app);
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  return { base, results };
}

describe('pieceHandler', () => {
  it('serves the bytes of every piece, and says why it serves none', async () => {
    const source = memorySource();
    const buffers = new PieceBuffers(1024 * 1024);
    const { base, results } = await serve({
      source: (asked) => (asked === digest ? source : undefined),
      buffers,
    });
    for (let index = 0; index < 4; index++) {
      const answer = await get(base, `/pieces/sha256/${hex}/${index}`);
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, blob.subarray(index * PIECE, (index + 1) * PIECE));
    }
    assert.equal((await get(base, `/pieces/sha256/${hex}/4`)).status, 404);
    assert.equal((await get(base, `/pieces/sha256/${'0'.repeat(64)}/0`)).status, 404);
    assert.equal((await get(base, `/pieces/sha256/nothex/0`)).status, 400);
    assert.deepEqual(results, [
      'served',
      'served',
      'served',
      'served',
      'missing',
      'missing',
      'invalid',
    ]);
    assert.equal(source.users, 0, 'every use released');
    // Each response's buffer came back once it was written out, and served the next piece.
    assert.equal(buffers.bytes, PIECE);
  });

  it('answers 429 past the caps, and takes the budget before reading', async () => {
    const source = memorySource();
    let open: () => void = () => undefined;
    const budget = new Promise<void>((resolve) => {
      open = resolve;
    });
    const taken: number[] = [];
    const { base, results } = await serve({
      source: () => source,
      uploadLimit: {
        take: (bytes) => {
          taken.push(bytes);
          return budget;
        },
      },
      uploads: { max: 2, perPeer: 1, timeoutMs: 10_000 },
      peerOf: (request) => String(request.headers['x-peer']),
    });
    const waitTaken = async (count: number): Promise<void> => {
      while (taken.length < count) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    const first = get(base, `/pieces/sha256/${hex}/0`, { 'x-peer': 'a' });
    await waitTaken(1);
    const samePeer = await get(base, `/pieces/sha256/${hex}/2`, { 'x-peer': 'a' });
    assert.equal(samePeer.status, 429);
    assert.equal(samePeer.retryAfter, '1');
    assert.equal(errorOf(samePeer), 'peer-busy');
    const second = get(base, `/pieces/sha256/${hex}/1`, { 'x-peer': 'b' });
    await waitTaken(2);
    // Both slots are waiting for the budget: nothing read yet.
    assert.equal(source.reads, 0);
    const full = await get(base, `/pieces/sha256/${hex}/2`, { 'x-peer': 'c' });
    assert.equal(full.status, 429);
    assert.equal(errorOf(full), 'busy');
    open();
    assert.equal((await first).status, 200);
    assert.equal((await second).status, 200);
    assert.deepEqual(taken, [PIECE, PIECE]);
    assert.deepEqual(results.slice(0, 2), ['peer-busy', 'busy']);
  });

  it('closes an answer past its timeout and frees its slot', async () => {
    const source = memorySource();
    let calls = 0;
    const { base, results } = await serve({
      source: () => source,
      // The first request waits for ever for its budget; the rest go at once.
      uploadLimit: {
        take: () => (calls++ === 0 ? new Promise<void>(() => undefined) : Promise.resolve()),
      },
      uploads: { max: 1, timeoutMs: 200 },
    });
    await assert.rejects(get(base, `/pieces/sha256/${hex}/0`));
    const next = await get(base, `/pieces/sha256/${hex}/1`);
    assert.equal(next.status, 200);
    assert.deepEqual(next.body, blob.subarray(PIECE, 2 * PIECE));
    assert.equal(source.users, 0);
    assert.deepEqual(results, ['served']);
  });

  it('refuses a rationed piece all the same when the refusal headers hook fails', async () => {
    const source = memorySource();
    const { base, results } = await serve({
      source: () => source,
      ration: () => undefined,
      rationedHeaders: () => {
        throw new Error('hook broken');
      },
    });
    const refused = await get(base, `/pieces/sha256/${hex}/0`);
    assert.equal(refused.status, 429);
    assert.equal(refused.retryAfter, '1');
    assert.equal(errorOf(refused), 'get this piece from a peer');
    assert.deepEqual(results, ['rationed']);
  });

  it('sends the asker elsewhere when the ration hook says so, and ends each ticket', async () => {
    const source = memorySource();
    const ended: boolean[] = [];
    let tickets = 1;
    const { base, results } = await serve({
      source: () => source,
      ration: () => {
        if (tickets === 0) {
          return undefined;
        }
        tickets -= 1;
        return { end: (complete) => ended.push(complete) };
      },
      // Headers of a refusal, from the blob refused (its first piece's length, to tell).
      rationedHeaders: (blob) => ({ 'x-refused': String(blob.pieceLength(0)) }),
    });
    const served = await get(base, `/pieces/sha256/${hex}/0`);
    assert.equal(served.status, 200);
    assert.equal(served.headers['x-refused'], undefined, 'only a refusal says what else is');
    const refused = await get(base, `/pieces/sha256/${hex}/0`);
    assert.equal(refused.status, 429);
    assert.equal(errorOf(refused), 'get this piece from a peer');
    assert.equal(refused.retryAfter, '1');
    assert.equal(refused.headers['x-refused'], `${source.pieceLength(0)}`, "the hook's headers");
    assert.deepEqual(results, ['served', 'rationed']);
    assert.deepEqual(ended, [true]);
  });
});
