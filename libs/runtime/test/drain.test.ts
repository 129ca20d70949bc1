import assert from 'node:assert/strict';
import { request } from 'node:http';
import { describe, it } from 'node:test';

import Fastify, { type FastifyInstance } from 'fastify';
import { pino } from 'pino';

import { drainOrCut, listenOn } from '../src/http-ops.js';

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
