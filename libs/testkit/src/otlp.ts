/**
 * An OTLP/HTTP trace receiver for tests: an in-process server taking `POST /v1/traces` in
 * the JSON encoding (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`), keeping every span it is sent,
 * and answering questions about them: wait for spans, list a trace, build its tree.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';

const gunzipAsync = promisify(gunzip);

/** Largest export request accepted, in bytes. */
const MAX_BODY_BYTES = 32 * 1024 * 1024;

export type SpanKindName =
  'unspecified' | 'internal' | 'server' | 'client' | 'producer' | 'consumer';

const KINDS: readonly SpanKindName[] = [
  'unspecified',
  'internal',
  'server',
  'client',
  'producer',
  'consumer',
];

/** One span as received, flattened. */
export interface CollectedSpan {
  /** 32 lowercase hex digits. */
  readonly traceId: string;
  /** 16 lowercase hex digits. */
  readonly spanId: string;
  /** The parent's span id; undefined for a root span. */
  readonly parentSpanId: string | undefined;
  readonly name: string;
  readonly kind: SpanKindName;
  /** The resource's `service.name`. */
  readonly service: string;
  /** Every resource attribute (`service.instance.id` from `OTEL_RESOURCE_ATTRIBUTES`, ...). */
  readonly resource: Readonly<Record<string, string | number | boolean>>;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
  /** Start time, in ns since the epoch. */
  readonly startNs: bigint;
  /** End time, in ns since the epoch. */
  readonly endNs: bigint;
  /** The moments recorded in the span (`markSpan`), in the order received. */
  readonly events: readonly SpanEvent[];
  /** True when the span's status is ERROR. */
  readonly error: boolean;
}

/** One span event: a named moment within a span. */
export interface SpanEvent {
  readonly name: string;
  /** When, in ns since the epoch. */
  readonly timeNs: bigint;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
}

/** A span and the spans whose parent it is, in start order. */
export interface TraceNode {
  readonly span: CollectedSpan;
  readonly children: TraceNode[];
}

export interface OtlpReceiver {
  /** Base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`. */
  readonly url: string;
  /** The environment a service needs to export its spans here, quickly. */
  readonly env: Readonly<Record<string, string>>;
  /** Every span received so far. */
  spans(): CollectedSpan[];
  /** The spans of one trace. */
  trace(traceId: string): CollectedSpan[];
  /** Waits until `ready(spans)` holds for the spans received; throws after `timeoutMs`. */
  waitFor(
    what: string,
    ready: (spans: readonly CollectedSpan[]) => boolean,
    timeoutMs?: number,
  ): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a receiver on a free port of 127.0.0.1. */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const collected: CollectedSpan[] = [];
  const server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/v1/traces') {
      res.writeHead(404).end();
      return;
    }
    if (!(req.headers['content-type'] ?? '').startsWith('application/json')) {
      req.resume();
      res.writeHead(415, { 'content-type': 'text/plain' }).end('send http/json');
      return;
    }
    readBody(req).then(
      (body) => {
        collected.push(...decodeExport(body));
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      },
      (error: unknown) => {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(String(error));
      },
    );
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      // Export every 100 ms rather than every 5 s, so a test need not wait.
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_BSP_MAX_QUEUE_SIZE: '65536',
    },
    spans: () => [...collected],
    trace: (traceId) => collected.filter((s) => s.traceId === traceId),
    waitFor: async (what, ready, timeoutMs = 15_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!ready(collected)) {
        if (Date.now() > deadline) {
          throw new Error(`timed out waiting for spans: ${what} (${collected.length} received)`);
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    stop: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** The trees of `spans` (one per root; a span whose parent is missing counts as a root). */
export function traceTree(spans: readonly CollectedSpan[]): TraceNode[] {
  const nodes = new Map<string, TraceNode>();
  const ordered = [...spans].sort((a, b) => (a.startNs < b.startNs ? -1 : 1));
  for (const span of ordered) {
    nodes.set(span.spanId, { span, children: [] });
  }
  const roots: TraceNode[] = [];
  for (const node of nodes.values()) {
    const parentId = node.span.parentSpanId;
    const parent = parentId === undefined ? undefined : nodes.get(parentId);
    if (parent === undefined) {
      roots.push(node);
    } else {
      parent.children.push(node);
    }
  }
  return roots;
}

/**
 * A tree as indented text, `service: name (kind)` per span; runs of siblings with the same
 * service, name and kind are folded into one line with a count, to keep it readable.
 */
export function formatTraceTree(roots: readonly TraceNode[]): string {
  const lines: string[] = [];
  const walk = (nodes: readonly TraceNode[], depth: number): void => {
    const groups = new Map<string, TraceNode[]>();
    for (const node of nodes) {
      const key = `${node.span.service}: ${node.span.name} (${node.span.kind})`;
      groups.set(key, [...(groups.get(key) ?? []), node]);
    }
    for (const [key, group] of groups) {
      lines.push(`${'  '.repeat(depth)}${key}${group.length > 1 ? ` x${group.length}` : ''}`);
      walk(
        group.flatMap((n) => n.children),
        depth + 1,
      );
    }
  };
  walk(roots, 0);
  return lines.join('\n');
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > MAX_BODY_BYTES) {
      throw new Error('export request too large');
    }
    chunks.push(chunk);
  }
  let body = Buffer.concat(chunks);
  if (req.headers['content-encoding'] === 'gzip') {
    body = await gunzipAsync(body);
  }
  return JSON.parse(body.toString('utf8')) as unknown;
}

interface JsonAttribute {
  key?: string;
  value?: {
    stringValue?: string;
    boolValue?: boolean;
    intValue?: string | number;
    doubleValue?: number;
  };
}

interface JsonSpan {
  traceId?: string;
  spanId?: string;
  parentSpanId?: string;
  name?: string;
  kind?: number;
  startTimeUnixNano?: string | number;
  endTimeUnixNano?: string | number;
  attributes?: JsonAttribute[];
  events?: { name?: string; timeUnixNano?: string | number; attributes?: JsonAttribute[] }[];
  status?: { code?: number };
}

interface JsonExport {
  resourceSpans?: {
    resource?: { attributes?: JsonAttribute[] };
    scopeSpans?: { spans?: JsonSpan[] }[];
  }[];
}

function decodeExport(body: unknown): CollectedSpan[] {
  const spans: CollectedSpan[] = [];
  for (const resourceSpans of (body as JsonExport).resourceSpans ?? []) {
    const resource = attributesOf(resourceSpans.resource?.attributes);
    const service = String(resource['service.name'] ?? '');
    for (const scope of resourceSpans.scopeSpans ?? []) {
      for (const span of scope.spans ?? []) {
        const parent = hexId(span.parentSpanId ?? '');
        spans.push({
          traceId: hexId(span.traceId ?? ''),
          spanId: hexId(span.spanId ?? ''),
          parentSpanId: parent === '' ? undefined : parent,
          name: span.name ?? '',
          kind: KINDS[span.kind ?? 0] ?? 'unspecified',
          service,
          resource,
          attributes: attributesOf(span.attributes),
          startNs: BigInt(span.startTimeUnixNano ?? 0),
          endNs: BigInt(span.endTimeUnixNano ?? 0),
          events: (span.events ?? []).map((event) => ({
            name: event.name ?? '',
            timeNs: BigInt(event.timeUnixNano ?? 0),
            attributes: attributesOf(event.attributes),
          })),
          error: span.status?.code === 2,
        });
      }
    }
  }
  return spans;
}

/** Ids come as hex in OTLP/JSON; accept base64 too, as some encoders send the proto form. */
function hexId(value: string): string {
  if (value === '' || /^[0-9a-f]+$/i.test(value)) {
    return value.toLowerCase();
  }
  return Buffer.from(value, 'base64').toString('hex');
}

function attributesOf(
  attributes: JsonAttribute[] | undefined,
): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of attributes ?? []) {
    if (key === undefined || value === undefined) {
      continue;
    }
    if (value.stringValue !== undefined) {
      out[key] = value.stringValue;
    } else if (value.boolValue !== undefined) {
      out[key] = value.boolValue;
    } else if (value.intValue !== undefined) {
      out[key] = Number(value.intValue);
    } else if (value.doubleValue !== undefined) {
      out[key] = value.doubleValue;
    }
  }
  return out;
}

/** One trace's spans with the lookups its assertions need. */
export interface TraceView {
  readonly spans: readonly CollectedSpan[];
  /** The span's parent, when it is in the trace. */
  readonly parentOf: (span: CollectedSpan) => CollectedSpan | undefined;
  /** The spans `service` named `name`. */
  readonly named: (service: string, name: string) => CollectedSpan[];
  /** The trace as trees (one, when every parent is in it). */
  readonly roots: TraceNode[];
}

export function traceView(spans: readonly CollectedSpan[]): TraceView {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  return {
    spans,
    parentOf: (span) => (span.parentSpanId === undefined ? undefined : byId.get(span.parentSpanId)),
    named: (service, name) => spans.filter((s) => s.service === service && s.name === name),
    roots: traceTree(spans),
  };
}
