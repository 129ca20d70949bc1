import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpGet } from 'node:http';
import { connect } from 'node:net';
import { after, describe, it } from 'node:test';

import Fastify, { type FastifyInstance } from 'fastify';

import { PieceBuffers } from '../src/buffers.js';
import {
  pieceHandler,
  PIECE_ROUTE,
  SendTurns,
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

/**
 * An upload budget whose first take waits until `open` is called; the others go at once.
 * `takes` counts them.
 */
function firstBudgetHeld(): { take(): Promise<void>; open(): void; readonly takes: number } {
  let release: () => void = () => undefined;
  let takes = 0;
  return {
    take: () => {
      takes += 1;
      return takes === 1
        ? new Promise<void>((resolve) => {
            release = resolve;
          })
        : Promise.resolve();
    },
    open: () => release(),
    get takes() {
      return takes;
    },
  };
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

  it('tells of a copy cut off mid-answer, and ends its ticket as not sent whole', async () => {
    // More than the sockets on both ends buffer, so that the answer is still being written
    // when the asker leaves after its first bytes.
    const big = 64 * 1024 * 1024;
    const source: PieceSource = {
      pieceLength: (index) => (index === 0 ? big : undefined),
      readPiece: (_index, buffer) => Promise.resolve(buffer.fill(7)),
      acquire: () => true,
      release: () => undefined,
    };
    const ended: boolean[] = [];
    let cut = 0;
    const closed = new Promise<void>((resolve) => {
      void serve({
        source: () => source,
        buffers: new PieceBuffers(0),
        ration: () => ({
          end: (complete) => {
            ended.push(complete);
            resolve();
          },
        }),
        onCut: () => {
          cut += 1;
        },
      }).then(({ base }) => {
        // An asker that reads nothing: the answer fills the sockets' buffers and waits; then
        // the asker leaves.
        const { hostname, port } = new URL(base);
        const socket = connect({ host: hostname, port: Number(port) }, () => {
          socket.pause();
          socket.write(`GET /pieces/sha256/${hex}/0 HTTP/1.1\r\nhost: ${hostname}\r\n\r\n`);
          setTimeout(() => socket.destroy(), 300);
        });
        socket.once('error', () => undefined);
      });
    });
    await closed;
    assert.deepEqual(ended, [false]);
    assert.equal(cut, 1);
    // A copy written out whole is not told of.
    const { base } = await serve({
      source: () => memorySource(),
      onCut: () => {
        cut += 1;
      },
    });
    assert.equal((await get(base, `/pieces/sha256/${hex}/0`)).status, 200);
    assert.equal(cut, 1);
  });

  it('sends a few answers at once and lines the others up', async () => {
    const source = memorySource();
    // Budget taken by the answers sending, in order; each waits until the test lets it go.
    const order: number[] = [];
    const gates: (() => void)[] = [];
    const { base, results } = await serve({
      source: () => source,
      uploadLimit: {
        take: () =>
          new Promise<void>((resolve) => {
            order.push(order.length);
            gates.push(resolve);
          }),
      },
      uploads: { max: 8, sending: 2, timeoutMs: 10_000 },
    });
    const waitFor = async (count: number): Promise<void> => {
      while (order.length < count) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    const answers = [0, 1, 2, 3].map((index) => get(base, `/pieces/sha256/${hex}/${index}`));
    await waitFor(2);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(order.length, 2, 'two answers at once; the others wait their turn');
    assert.equal(source.reads, 0);
    gates[0]?.();
    await waitFor(3);
    gates[1]?.();
    gates[2]?.();
    await waitFor(4);
    gates[3]?.();
    const got = await Promise.all(answers);
    for (const [index, answer] of got.entries()) {
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, blob.subarray(index * PIECE, (index + 1) * PIECE));
    }
    assert.deepEqual(results, ['served', 'served', 'served', 'served']);
    assert.equal(source.users, 0);
  });

  it('lets an asker that left while waiting its turn go, and the turn pass on', async () => {
    const source = memorySource();
    const budget = firstBudgetHeld();
    const { base, results } = await serve({
      source: () => source,
      uploadLimit: budget,
      uploads: { max: 8, sending: 1, timeoutMs: 10_000 },
    });
    const first = get(base, `/pieces/sha256/${hex}/0`);
    while (budget.takes < 1) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    // The second asker waits its turn, then leaves.
    const leaving = httpGet(new URL(`/pieces/sha256/${hex}/1`, base));
    leaving.once('error', () => undefined);
    leaving.end();
    await new Promise((resolve) => setTimeout(resolve, 100));
    leaving.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    budget.open();
    assert.equal((await first).status, 200);
    const third = await get(base, `/pieces/sha256/${hex}/2`);
    assert.equal(third.status, 200);
    assert.deepEqual(third.body, blob.subarray(2 * PIECE, 3 * PIECE));
    assert.deepEqual([...results].sort(), ['aborted', 'served', 'served']);
    assert.equal(budget.takes, 2, 'no budget taken for the asker that left');
    assert.equal(source.reads, 2);
    assert.equal(source.users, 0);
  });

  it('frees every turn and slot when a pipelined connection dies with answers queued', async () => {
    // Pieces larger than the sockets buffer, so that the answers are still queued when the
    // asker leaves; the last one asked for is small, to be read whole after.
    const big = 16 * 1024 * 1024;
    let users = 0;
    const source: PieceSource = {
      pieceLength: (index) => (index < 3 ? big : index === 3 ? 1024 : undefined),
      readPiece: (_index, buffer) => Promise.resolve(buffer.fill(7)),
      acquire: () => {
        users += 1;
        return true;
      },
      release: () => {
        users -= 1;
      },
    };
    const inFlight: [number, number][] = [];
    const { base, results } = await serve({
      source: () => source,
      buffers: new PieceBuffers(0),
      uploads: { max: 8, sending: 1, timeoutMs: 10_000 },
      onInFlight: (uploads, waiting) => inFlight.push([uploads, waiting]),
    });
    const { hostname, port } = new URL(base);
    // Three requests at once on one connection that reads nothing, then leaves.
    await new Promise<void>((resolve) => {
      const socket = connect({ host: hostname, port: Number(port) }, () => {
        socket.pause();
        const ask = (index: number): string =>
          `GET /pieces/sha256/${hex}/${index} HTTP/1.1\r\nhost: ${hostname}\r\n\r\n`;
        socket.write(ask(0) + ask(1) + ask(2));
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 200);
      });
      socket.once('error', () => undefined);
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(inFlight.at(-1), [0, 0], 'no answer, no turn left counted');
    assert.equal(users, 0);
    const next = await get(base, `/pieces/sha256/${hex}/3`);
    assert.equal(next.status, 200);
    assert.deepEqual(next.body, Buffer.alloc(1024, 7));
    assert.equal(results.at(-1), 'served');
  });

  it('answers 429 busy past the longest wait for a turn, and tells the ticket when bytes start', async () => {
    const source = memorySource();
    const budget = firstBudgetHeld();
    const started: number[] = [];
    const ended: boolean[] = [];
    const { base, results } = await serve({
      source: () => source,
      uploadLimit: budget,
      uploads: { max: 8, sending: 1, turnMs: 300, timeoutMs: 10_000 },
      ration: (_source, index) => ({
        started: () => started.push(index),
        end: (complete) => ended.push(complete),
      }),
    });
    const first = get(base, `/pieces/sha256/${hex}/0`);
    while (budget.takes < 1) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.deepEqual(started, [], 'not before its budget and read');
    const waited = await get(base, `/pieces/sha256/${hex}/1`);
    assert.equal(waited.status, 429);
    assert.equal(waited.retryAfter, '1');
    assert.equal(errorOf(waited), 'busy');
    budget.open();
    assert.equal((await first).status, 200);
    assert.deepEqual(started, [0]);
    assert.deepEqual(results, ['busy', 'served']);
    assert.deepEqual(ended.sort(), [false, true], 'the one turned away ends as not sent');
    assert.equal(source.users, 0);
  });
  it('gives the next turn to the waiting answer whose piece the most others want', async () => {
    const source = memorySource();
    const budget = firstBudgetHeld();
    const started: number[] = [];
    /** Others turned away for each piece, as the ration would count them. */
    const demand = new Map<number, number>();
    let waiting = 0;
    const { base, results } = await serve({
      source: () => source,
      uploadLimit: budget,
      uploads: { max: 8, sending: 1, timeoutMs: 10_000 },
      ration: (_source, index) => ({
        started: () => started.push(index),
        demand: () => demand.get(index) ?? 0,
        end: () => undefined,
      }),
      onInFlight: (_uploads, inLine) => {
        waiting = inLine;
      },
    });
    const waitForLine = async (count: number): Promise<void> => {
      while (waiting < count) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    // Piece 0 holds the one turn; 1, 2 and 3 line up in that order.
    const answers = [get(base, `/pieces/sha256/${hex}/0`)];
    while (budget.takes < 1) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    for (const index of [1, 2, 3]) {
      answers.push(get(base, `/pieces/sha256/${hex}/${index}`));
      await waitForLine(index);
    }
    // Asked when the turn frees, not when lining up: the last in line is wanted by two others.
    demand.set(3, 2);
    budget.open();
    const got = await Promise.all(answers);
    for (const [index, answer] of got.entries()) {
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, blob.subarray(index * PIECE, (index + 1) * PIECE));
    }
    assert.deepEqual(started, [0, 3, 1, 2], 'the wanted piece first, then first come');
    assert.deepEqual(results, ['served', 'served', 'served', 'served']);
    assert.equal(source.users, 0);
  });
});

describe('SendTurns', () => {
  it('gives turns in order, and a request that leaves the line takes none', async () => {
    const turns = new SendTurns(1);
    const first = turns.take();
    const second = turns.take();
    const third = turns.take();
    const got: string[] = [];
    void second.ready.then(() => got.push('second'));
    void third.ready.then(() => got.push('third'));
    await first.ready;
    assert.equal(turns.waiting, 2);
    // The second leaves before its turn: its `ready` settles, and the turn is the third's.
    second.release();
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(got, ['second']);
    assert.equal(turns.waiting, 1);
    first.release();
    first.release();
    await third.ready;
    assert.deepEqual(got, ['second', 'third']);
    // Released twice, the first's turn was passed on once: one turn, held by the third.
    const fourth = turns.take();
    let fourthReady = false;
    void fourth.ready.then(() => {
      fourthReady = true;
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(fourthReady, false);
    third.release();
    await fourth.ready;
    fourth.release();
    assert.equal(turns.waiting, 0);
  });

  it('gives a freed turn to the most wanted piece, asking each waiter its demand then', async () => {
    const turns = new SendTurns(1);
    const holder = turns.take();
    const demands = [0, 0, 0];
    const waiters = demands.map((_, i) => turns.take(() => demands[i] ?? 0));
    const got: number[] = [];
    waiters.forEach((waiter, i) => void waiter.ready.then(() => got.push(i)));
    const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
    await holder.ready;
    // Wanted after lining up: the demand is read when a turn frees.
    demands[1] = 3;
    demands[2] = 3;
    holder.release();
    await settle();
    assert.deepEqual(got, [1], 'the most wanted, the earlier of two equals');
    waiters[1]?.release();
    await settle();
    assert.deepEqual(got, [1, 2]);
    waiters[2]?.release();
    await settle();
    assert.deepEqual(got, [1, 2, 0], 'the unwanted one last, not never');
    waiters[0]?.release();
    assert.equal(turns.waiting, 0);
    // All released: the one turn is free again.
    let again = false;
    void turns.take().ready.then(() => {
      again = true;
    });
    await settle();
    assert.equal(again, true);
  });

  it('gives the oldest waiter its turn once it has waited long enough, whatever the demand', async () => {
    const clock = { ms: 0 };
    const turns = new SendTurns(1, 5_000, () => clock.ms);
    const holder = turns.take();
    const got: string[] = [];
    const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
    const lone = turns.take();
    void lone.ready.then(() => got.push('lone'));
    clock.ms = 1_000;
    const wanted = turns.take(() => 4);
    void wanted.ready.then(() => got.push('wanted'));
    const throws = turns.take(() => {
      throw new Error('a broken hook');
    });
    void throws.ready.then(() => got.push('throws'));
    // The lone one has waited 4.999 s: the wanted piece goes first.
    clock.ms = 4_999;
    holder.release();
    await settle();
    assert.deepEqual(got, ['wanted']);
    // Now 5 s: the lone one, though another waiter's piece is wanted more.
    const more = turns.take(() => 9);
    void more.ready.then(() => got.push('more'));
    clock.ms = 5_000;
    wanted.release();
    await settle();
    assert.deepEqual(got, ['wanted', 'lone']);
    lone.release();
    await settle();
    // A hook that throws counts as no demand; the line goes on.
    assert.deepEqual(got, ['wanted', 'lone', 'more']);
    more.release();
    await settle();
    assert.deepEqual(got, ['wanted', 'lone', 'more', 'throws']);
    throws.release();
    assert.equal(turns.waiting, 0);
  });
});
