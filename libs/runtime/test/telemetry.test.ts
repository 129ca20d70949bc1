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
  withSpan,
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
});
