import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { RawHttpClient, type GetOptions } from '../src/raw-http.js';

const BODY = randomBytes(3 * 1024 * 1024 + 17);

let server: Server;
let base: string;
let connections: number;
let handler: (req: IncomingMessage, res: ServerResponse) => void;
let client: RawHttpClient;

beforeEach(async () => {
  connections = 0;
  handler = (_req, res) => {
    res.setHeader('content-length', BODY.length);
    res.end(BODY);
  };
  server = createServer((req, res) => handler(req, res));
  server.on('connection', () => {
    connections += 1;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  client = new RawHttpClient();
});

afterEach(async () => {
  client.close();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

function options(timeoutMs = 5000, signal = AbortSignal.timeout(10_000)): GetOptions {
  return {
    headers: { 'x-test': 'yes' },
    signal,
    timeoutMs,
    timeoutError: (kind) => new Error(`timeout: ${kind}`),
  };
}

/** GETs `path` and returns the status and the body, copied. */
async function get(
  path: string,
  opts = options(),
  slowSink = false,
): Promise<{ status: number; length: number | undefined; body: Buffer }> {
  const chunks: Buffer[] = [];
  let status = 0;
  let length: number | undefined;
  await client.get(new URL(path, base), opts, {
    onHead: (s, l) => {
      status = s;
      length = l;
    },
    onBody: (bytes) => {
      chunks.push(Buffer.from(bytes));
      return slowSink ? sleep(1) : undefined;
    },
  });
  return { status, length, body: Buffer.concat(chunks) };
}

describe('RawHttpClient', () => {
  it('reads bodies of a known length over one keep-alive connection, with the headers sent', async () => {
    let seen: string | undefined;
    handler = (req, res) => {
      seen = req.headers['x-test'] as string | undefined;
      res.setHeader('content-length', BODY.length);
      res.end(BODY);
    };
    for (let i = 0; i < 3; i++) {
      const { status, length, body } = await get(`/piece/${i}`);
      assert.equal(status, 200);
      assert.equal(length, BODY.length);
      assert.ok(body.equals(BODY));
    }
    assert.equal(seen, 'yes');
    assert.equal(connections, 1);
  });

  it('reads a chunked body, pausing while the sink is busy', async () => {
    handler = (_req, res) => {
      res.write(BODY.subarray(0, 1000));
      res.write(BODY.subarray(1000, 700_000));
      res.end(BODY.subarray(700_000));
    };
    const { status, length, body } = await get('/chunked', options(), true);
    assert.equal(status, 200);
    assert.equal(length, undefined);
    assert.ok(body.equals(BODY));
    // The connection is good for another request.
    assert.ok((await get('/chunked')).body.equals(BODY));
    assert.equal(connections, 1);
  });

  it("reads a body straight into the sink's buffer, never past the body's end", async () => {
    for (let i = 0; i < 3; i++) {
      // Larger than the body: the reads must stop at its end, and the next response's head
      // (same connection) must still be read as a head.
      const target = Buffer.alloc(BODY.length + 64 * 1024, 0xee);
      let filled = 0;
      let copied = 0;
      let direct = 0;
      let directReads = 0;
      await client.get(new URL(`/direct/${i}`, base), options(), {
        onHead: () => undefined,
        onBody: (bytes) => {
          // Only what came in the same read as the head.
          bytes.copy(target, filled);
          filled += bytes.length;
          copied += bytes.length;
        },
        bodyBuffer: () => target.subarray(filled),
        onBodyRead: (count) => {
          filled += count;
          direct += count;
          directReads += 1;
          // A slow sink now and then: reading pauses and resumes into the same buffer.
          return directReads % 7 === 0 ? sleep(1) : undefined;
        },
      });
      assert.equal(copied + direct, BODY.length);
      assert.ok(target.subarray(0, BODY.length).equals(BODY));
      assert.ok(
        target.subarray(BODY.length).every((b) => b === 0xee),
        'nothing past the body',
      );
      assert.ok(direct > BODY.length / 2, `${direct} of ${BODY.length} bytes read in place`);
    }
    assert.equal(connections, 1);
  });

  it('ends the exchange with the error onHead throws', async () => {
    handler = (_req, res) => {
      res.statusCode = 429;
      res.end('{"error":"busy"}');
    };
    await assert.rejects(
      client.get(new URL('/busy', base), options(), {
        onHead: (status) => {
          throw new Error(`status ${status}`);
        },
        onBody: () => undefined,
      }),
      /status 429/,
    );
  });

  it('keeps the connection after an answer onHead refuses, when its body is short', async () => {
    // The peer or seed server turning a request away (429, 404) with a small JSON body, then
    // serving: one connection carries both, and the refused body reaches no sink buffer.
    let refuse = true;
    handler = (_req, res) => {
      const body = refuse ? Buffer.from('{"error":"get piece 3 from a peer"}') : BODY;
      res.statusCode = refuse ? 429 : 200;
      res.setHeader('content-length', body.length);
      res.end(body);
    };
    const target = Buffer.alloc(BODY.length, 0xee);
    let filled = 0;
    const sink = {
      onHead: (status: number) => {
        if (status !== 200) {
          throw new Error(`status ${status}`);
        }
      },
      onBody: (bytes: Buffer) => {
        bytes.copy(target, filled);
        filled += bytes.length;
      },
      bodyBuffer: () => target.subarray(filled),
      onBodyRead: (count: number) => {
        filled += count;
      },
    };
    for (let i = 0; i < 3; i++) {
      refuse = true;
      await assert.rejects(client.get(new URL(`/piece/${i}`, base), options(), sink), /status 429/);
      assert.equal(filled, 0, 'the refused body went nowhere');
      refuse = false;
      await client.get(new URL(`/piece/${i}`, base), options(), sink);
      assert.ok(target.equals(BODY));
      target.fill(0xee);
      filled = 0;
    }
    assert.equal(connections, 1, 'six answers on one connection');
  });

  it('drains a refused body that comes after its head, and stops on an abort meanwhile', async () => {
    // The head first, the body 100 ms later: still one connection for the next answer.
    handler = (req, res) => {
      if (req.url?.startsWith('/ok') === true) {
        res.setHeader('content-length', BODY.length);
        res.end(BODY);
        return;
      }
      res.statusCode = 429;
      res.setHeader('content-length', 16);
      res.flushHeaders();
      setTimeout(() => res.end('{"error":"busy"}'), 100);
    };
    const refuse = {
      onHead: (status: number) => {
        if (status !== 200) {
          throw new Error(`status ${status}`);
        }
      },
      onBody: () => undefined,
    };
    await assert.rejects(client.get(new URL('/late', base), options(), refuse), /status 429/);
    assert.equal((await get('/ok')).body.length, BODY.length);
    assert.equal(connections, 1);
    // Aborted while the refused body is on its way: the abort is what ended it.
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('stalled: aborted')), 30);
    await assert.rejects(
      client.get(new URL('/late', base), options(5000, controller.signal), refuse),
      /stalled: aborted/,
    );
  });

  it('does not wait for the body of a refused answer on a connection that closes', async () => {
    handler = (_req, res) => {
      res.statusCode = 404;
      res.setHeader('content-length', 16);
      res.setHeader('connection', 'close');
      res.flushHeaders();
      setTimeout(() => res.end('{"error":"gone"}'), 1_000);
    };
    const started = Date.now();
    await assert.rejects(
      client.get(new URL('/gone', base), options(), {
        onHead: (status) => {
          throw new Error(`status ${status}`);
        },
        onBody: () => undefined,
      }),
      /status 404/,
    );
    assert.ok(Date.now() - started < 900, 'rejected before the body came');
  });

  it('closes the connection after a refused answer with a long body', async () => {
    handler = (_req, res) => {
      const body = Buffer.alloc(65 * 1024, 0x61);
      res.statusCode = 404;
      res.setHeader('content-length', body.length);
      res.end(body);
    };
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        client.get(new URL(`/gone/${i}`, base), options(), {
          onHead: (status) => {
            throw new Error(`status ${status}`);
          },
          onBody: () => assert.fail('no body for a refused answer'),
        }),
        /status 404/,
      );
    }
    assert.equal(connections, 2, 'not worth reading: a new connection each time');
  });

  it('replaces a connection the server closed while it was idle', async () => {
    assert.ok((await get('/a')).body.equals(BODY));
    server.closeIdleConnections();
    await sleep(50);
    assert.ok((await get('/b')).body.equals(BODY));
    assert.equal(connections, 2);
  });

  it('fails when the body ends early', async () => {
    handler = (_req, res) => {
      res.setHeader('content-length', BODY.length);
      res.write(BODY.subarray(0, 1000), () => res.destroy());
    };
    await assert.rejects(get('/short'));
  });

  it('times out a server that does not answer, and stops on an abort', async () => {
    handler = () => undefined;
    await assert.rejects(get('/silent', options(200)), /timeout/);
    const controller = new AbortController();
    const pending = get('/silent', options(5000, controller.signal));
    setTimeout(() => controller.abort(new Error('caller gave up')), 50);
    await assert.rejects(pending, /caller gave up/);
  });

  it('lets a slow body that keeps moving run past the idle timeout', async () => {
    // 12 small writes 40 ms apart: 480 ms in all, never 150 ms silent.
    const parts = 12;
    handler = (_req, res) => {
      res.setHeader('content-length', parts * 100);
      let sent = 0;
      const timer = setInterval(() => {
        res.write(BODY.subarray(sent * 100, (sent + 1) * 100));
        sent += 1;
        if (sent === parts) {
          clearInterval(timer);
          res.end();
        }
      }, 40);
    };
    const started = performance.now();
    const { body } = await get('/slow', options(150));
    assert.ok(performance.now() - started >= 400);
    assert.deepEqual(body, BODY.subarray(0, parts * 100));
  });

  it('times out a body that stops halfway, within a quarter past the idle timeout', async () => {
    handler = (_req, res) => {
      res.setHeader('content-length', 2000);
      res.write(BODY.subarray(0, 1000));
    };
    const started = performance.now();
    await assert.rejects(get('/stalled', options(200)), /timeout: idle/);
    const elapsed = performance.now() - started;
    // Silent from about the start: noticed between 200 and 250 ms later (timers run late
    // on a busy machine, never early).
    assert.ok(elapsed >= 195, `timed out after ${elapsed} ms`);
  });

  it('gives a body that stops part-way its own, shorter timeout, and a slow head the longer one', async () => {
    const withBody = (bodyTimeoutMs: number): GetOptions => ({ ...options(1500), bodyTimeoutMs });
    // A head 400 ms late (past the body's 200 ms, within the 1,500 ms before it), then the body.
    handler = (_req, res) => {
      setTimeout(() => {
        res.setHeader('content-length', 1000);
        res.end(BODY.subarray(0, 1000));
      }, 400);
    };
    const { body } = await get('/late-head', withBody(200));
    assert.deepEqual(body, BODY.subarray(0, 1000));
    // A head at once, then its body 400 ms late (a proxy waiting on its own upstream): still
    // the longer wait, until the body's first bytes.
    handler = (_req, res) => {
      res.writeHead(200, { 'content-length': 1000 });
      res.flushHeaders();
      setTimeout(() => res.end(BODY.subarray(0, 1000)), 400);
    };
    const late = await get('/late-body', withBody(200));
    assert.deepEqual(late.body, BODY.subarray(0, 1000));
    // A body that stops part-way: given up at its own timeout, not the longer one.
    handler = (_req, res) => {
      res.setHeader('content-length', 2000);
      res.write(BODY.subarray(0, 1000));
    };
    const started = performance.now();
    await assert.rejects(get('/stalled', withBody(200)), /timeout: idle/);
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= 195 && elapsed < 1400, `timed out after ${elapsed} ms`);
  });

  it('does not count the time the sink holds reading paused as the server silent', async () => {
    // Two parts, the second 50 ms after the first: read while the sink holds the first.
    handler = (_req, res) => {
      res.setHeader('content-length', 4000);
      res.write(BODY.subarray(0, 1000));
      setTimeout(() => res.end(BODY.subarray(1000, 4000)), 50);
    };
    const chunks: Buffer[] = [];
    const started = performance.now();
    await client.get(new URL('/paused', base), options(150), {
      onHead: () => undefined,
      onBody: (bytes) => {
        chunks.push(Buffer.from(bytes));
        // The sink's write takes twice the idle timeout: the server sent everything long ago.
        return chunks.length === 1 ? sleep(400) : undefined;
      },
    });
    assert.ok(performance.now() - started >= 390);
    assert.deepEqual(Buffer.concat(chunks), BODY.subarray(0, 4000));
  });
});
