import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { headers as natsHeaders } from '@nats-io/transport-node';
import { startOtlpReceiver, traceTree, type OtlpReceiver } from '@shoal/testkit';

import {
  contextFromHttp,
  createLogger,
  injectHttp,
  SpanKind,
  startTelemetry,
  traceFields,
  tracingEnabled,
  withCallerServerSpan,
  withSpan,
  withSpanOnFailure,
  type Telemetry,
} from '../src/index.js';
import { contextFromHeaders, traceHeaders } from '../src/nats.js';

describe('tracingEnabled', () => {
  it('needs an OTLP endpoint and no switch turning it off', () => {
    assert.equal(tracingEnabled({}), false);
    assert.equal(tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }), true);
    assert.equal(
      tracingEnabled({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c/v1/traces' }),
      true,
    );
    assert.equal(
      tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }),
      false,
    );
    assert.equal(
      tracingEnabled({
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
        OTEL_TRACES_EXPORTER: 'none',
      }),
      false,
    );
  });

  it('is a no-op without an endpoint: spans run, nothing is propagated or logged', async () => {
    const telemetry = await startTelemetry('off', {});
    assert.equal(telemetry.enabled, false);
    const result = await withSpan('nothing', {}, () => {
      assert.deepEqual(traceFields(), {});
      assert.equal(traceHeaders(), undefined);
      return 42;
    });
    assert.equal(result, 42);
    await telemetry.shutdown();
  });

  it('passes a received trace context on when it exports none itself', () => {
    const received = natsHeaders();
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    received.set('traceparent', traceparent);
    assert.equal(traceHeaders(received)?.get('traceparent'), traceparent);
    assert.equal(traceHeaders(natsHeaders()), undefined);
  });

  it('refuses a protocol it cannot export with', async () => {
    await assert.rejects(
      startTelemetry('bad', {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      }),
      /OTEL_EXPORTER_OTLP_PROTOCOL/,
    );
  });
});

describe('startTelemetry with an OTLP receiver', () => {
  let receiver: OtlpReceiver;
  let telemetry: Telemetry;

  before(async () => {
    receiver = await startOtlpReceiver();
    // The SDK reads its batch settings from the process environment itself.
    Object.assign(process.env, receiver.env);
    telemetry = await startTelemetry('runtime-test', process.env);
  });

  after(async () => {
    await telemetry.shutdown();
    await receiver.stop();
  });

  it('exports one trace across NATS and HTTP headers, and logs carry its ids', async () => {
    const lines: string[] = [];
    const logger = createLogger({
      service: 'runtime-test',
      level: 'info',
      destination: new Writable({
        write(chunk: Buffer, _encoding, done) {
          lines.push(chunk.toString('utf8'));
          done();
        },
      }),
    });
    let traceId = '';
    let rootId = '';
    await withSpan('root', { kind: SpanKind.SERVER, attributes: { blob: 'b' } }, async (root) => {
      traceId = root.spanContext().traceId;
      rootId = root.spanContext().spanId;
      logger.info('inside the root span');
      const natsHeaders = traceHeaders();
      assert.ok(natsHeaders !== undefined);
      assert.match(natsHeaders.get('traceparent'), new RegExp(`^00-${traceId}-${rootId}-01$`));
      await withSpan(
        'consumer',
        { kind: SpanKind.CONSUMER, parent: contextFromHeaders(natsHeaders) },
        async () => {
          const http: Record<string, string> = {};
          await withSpan('client', { kind: SpanKind.CLIENT }, () => injectHttp(http));
          await withSpan(
            'server',
            { kind: SpanKind.SERVER, parent: contextFromHttp(http) },
            () => undefined,
          );
        },
      );
      await withSpan('fails', {}, () => {
        throw new Error('boom');
      }).catch(() => undefined);
    });
    logger.info('outside');

    const logged = lines.map((l) => JSON.parse(l) as { trace_id?: string; span_id?: string });
    const [inside, outside] = logged;
    assert.equal(inside?.trace_id, traceId);
    assert.equal(inside.span_id, rootId);
    assert.equal(outside?.trace_id, undefined);

    await receiver.waitFor(
      'five spans',
      (spans) => spans.filter((s) => s.traceId === traceId).length === 5,
    );
    const spans = receiver.trace(traceId);
    assert.ok(spans.every((s) => s.service === 'runtime-test'));
    const [root] = traceTree(spans);
    assert.equal(root?.span.name, 'root');
    assert.equal(root.span.kind, 'server');
    assert.equal(root.span.attributes.blob, 'b');
    assert.deepEqual(
      root.children.map((c) => c.span.name),
      ['consumer', 'fails'],
    );
    assert.equal(root.children[1]?.span.error, true);
    const consumer = root.children[0];
    assert.equal(consumer?.span.kind, 'consumer');
    assert.equal(consumer.children[0]?.span.name, 'client');
    assert.equal(consumer.children[0].children[0]?.span.name, 'server');
  });

  it('records work traced only on failure when it fails, and sends no trace context along', async () => {
    let traceId = '';
    const sent: Record<string, string>[] = [];
    let startedAtNs = 0n;
    await withSpan('download', {}, async (download) => {
      traceId = download.spanContext().traceId;
      const request = async (): Promise<void> => {
        const http: Record<string, string> = {};
        injectHttp(http);
        sent.push(http);
        await new Promise((resolve) => setTimeout(resolve, 20));
      };
      await withSpanOnFailure('ok', { kind: SpanKind.CLIENT }, request);
      const routine = new Error('rationed');
      await withSpanOnFailure('refused', { failed: (error) => error !== routine }, async () => {
        await request();
        throw routine;
      }).catch((error: unknown) => assert.equal(error, routine));
      startedAtNs = BigInt(Date.now()) * 1_000_000n;
      const boom = new Error('boom');
      await withSpanOnFailure(
        'failed',
        { kind: SpanKind.CLIENT, attributes: { piece: 7 } },
        async () => {
          await request();
          throw boom;
        },
      ).catch((error: unknown) => assert.equal(error, boom));
    });
    assert.deepEqual(sent, [{}, {}, {}], 'no traceparent on requests not traced');
    await receiver.waitFor(
      'the download and its failure',
      (spans) => spans.filter((s) => s.traceId === traceId).length === 2,
    );
    // Give a wrongly recorded span of the others time to arrive too.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const [root, ...rest] = traceTree(receiver.trace(traceId));
    assert.equal(rest.length, 0);
    assert.equal(root?.span.name, 'download');
    assert.deepEqual(
      root.children.map((c) => c.span.name),
      ['failed'],
    );
    const failed = root.children[0]?.span;
    assert.equal(failed?.error, true);
    assert.equal(failed.kind, 'client');
    assert.equal(failed.attributes.piece, 7);
    // From the work's start, not from the throw (20 ms later).
    assert.ok(failed.endNs - failed.startNs >= 15_000_000n, 'the span covers the work');
    assert.ok(failed.startNs <= startedAtNs + 5_000_000n);
  });

  it('starts a server span only for a request that carries a valid trace context', async () => {
    let traceId = '';
    const http: Record<string, string> = {};
    await withSpan('caller', { kind: SpanKind.CLIENT }, (caller) => {
      traceId = caller.spanContext().traceId;
      injectHttp(http);
    });
    const reply = { statusCode: 200 };
    const ran: string[] = [];
    for (const [label, headers] of [
      ['traced', http],
      ['none', {}],
      ['malformed', { traceparent: '00-nonsense' }],
    ] as const) {
      await withCallerServerSpan(`serve ${label}`, { headers }, reply, {}, () => {
        ran.push(label);
        return Promise.resolve();
      });
    }
    assert.deepEqual(ran, ['traced', 'none', 'malformed'], 'the handler runs every time');
    await receiver.waitFor('the traced serve', (spans) =>
      spans.some((s) => s.name === 'serve traced'),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    const served = receiver.spans().filter((s) => s.name.startsWith('serve '));
    assert.deepEqual(
      served.map((s) => [s.name, s.traceId, s.kind]),
      [['serve traced', traceId, 'server']],
    );
  });
});
