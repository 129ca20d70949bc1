import assert from 'node:assert/strict';
import { request } from 'node:http';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';

import Fastify, { type FastifyInstance } from 'fastify';
import { pino } from 'pino';

import { drainOrCut, listenOn } from '../src/http-ops.js';
import { createLogger, type Logger } from '../src/logger.js';
import { settleWithin } from '../src/nats.js';

const logger = pino({ level: 'silent' });

/** An app whose one route sends part of a body, then never the rest. */
async function hangingApp(
  prepare: (app: FastifyInstance) => void = () => undefined,
): Promise<{ app: FastifyInstance; url: string }> {
  const app = Fastify();
  prepare(app);
  app.get('/blob', (_request, reply) => {
    reply.raw.writeHead(200, { 'content-length': '1000' });
    reply.raw.write(Buffer.alloc(10));
    // The rest never comes, as from a download stalled at its source.
  });
  const url = await listenOn(app, { host: '127.0.0.1', port: 0 });
  return { app, url };
}

/** Starts a GET and resolves once its headers are in; `ended` says how the body ended. */
function startGet(url: string): Promise<{ ended: Promise<'complete' | 'broken'> }> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}/blob`, (res) => {
      const ended = new Promise<'complete' | 'broken'>((done) => {
        res.on('end', () => done(res.complete ? 'complete' : 'broken'));
        res.on('aborted', () => done('broken'));
        res.on('error', () => done('broken'));
        res.resume();
      });
      resolve({ ended });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('drainOrCut', () => {
  it('breaks the responses left at the deadline and goes on when the cut hangs', async () => {
    const { app, url } = await hangingApp();
    const get = await startGet(url);
    let cutCalled = false;
    const started = performance.now();
    await drainOrCut([app], {
      drainMs: 200,
      cutMs: 200,
      cut: () => {
        cutCalled = true;
        return new Promise<void>(() => undefined);
      },
      logger,
    });
    const tookMs = performance.now() - started;
    assert.ok(cutCalled);
    assert.ok(tookMs < 2_000, `drainOrCut took ${tookMs} ms`);
    assert.equal(await get.ended, 'broken');
  });

  it('resolves when a listener fails to close, or the cut rejects', async () => {
    const { app, url } = await hangingApp((fresh) => {
      fresh.addHook('onClose', () => Promise.reject(new Error('close failed')));
    });
    const get = await startGet(url);
    await drainOrCut([app], {
      drainMs: 100,
      cut: () => Promise.reject(new Error('cut failed')),
      logger,
    });
    assert.equal(await get.ended, 'broken');
  });

  it('returns at once when nothing is in flight, without cutting', async () => {
    const { app } = await hangingApp();
    let cutCalled = false;
    await drainOrCut([app], {
      drainMs: 10_000,
      cut: () => {
        cutCalled = true;
        return Promise.resolve();
      },
      logger,
    });
    assert.equal(cutCalled, false);
  });
});

describe('settleWithin', () => {
  /** A logger whose lines are kept, parsed. */
  function keptLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
    const lines: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    return { logger: createLogger({ service: 'test', level: 'info', destination }), lines };
  }

  it('goes on past a step that never ends, and says which', async () => {
    const { logger, lines } = keptLogger();
    const started = Date.now();
    await settleWithin('stuck step', new Promise(() => undefined), 50, logger);
    const waited = Date.now() - started;
    assert.ok(waited >= 45 && waited < 2_000, `${waited} ms`);
    assert.equal(lines.length, 1);
    const [line] = lines;
    assert.ok(line !== undefined);
    assert.equal(line.step, 'stuck step');
    assert.equal(line.level, 'warn');
  });

  it('returns as soon as the step ends, and logs a failed one without throwing', async () => {
    const { logger, lines } = keptLogger();
    const started = Date.now();
    await settleWithin('quick', Promise.resolve(), 10_000, logger);
    await settleWithin('failing', Promise.reject(new Error('boom')), 10_000, logger);
    assert.ok(Date.now() - started < 1_000);
    assert.deepEqual(
      lines.map((line) => line.step),
      ['failing'],
    );
  });
});
