/**
 * Explicit spans for Shoal's services, on `@opentelemetry/api` only: without a started SDK
 * (see telemetry.ts) every call here is a cheap no-op, so services and tests use the same code
 * whether traces are exported or not.
 *
 * Attributes are set by name at each call site and never copied from request headers, so a
 * client's `Authorization` (or any other credential) cannot reach a trace.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

import {
  context,
  isSpanContextValid,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
} from '@opentelemetry/api';

export {
  SpanKind,
  SpanStatusCode,
  type Attributes,
  type Context,
  type Span,
} from '@opentelemetry/api';

/** The instrumentation scope of every Shoal span; the service is the resource's `service.name`. */
const TRACER_NAME = 'shoal';

/** Shoal's tracer (a no-op one until telemetry starts). */
export function tracer() {
  return trace.getTracer(TRACER_NAME);
}

export interface SpanOptions {
  readonly kind?: SpanKind;
  readonly attributes?: Attributes;
  /** The parent; the active context by default. */
  readonly parent?: Context;
}

/**
 * Runs `fn` in a new active span, ended when `fn` settles. A throw is recorded on the span
 * (status ERROR) and rethrown.
 */
export function withSpan<T>(
  name: string,
  options: SpanOptions,
  fn: (span: Span) => Promise<T> | T,
): Promise<T> {
  const parent = options.parent ?? context.active();
  return tracer().startActiveSpan(name, startOptions(options), parent, async (span) => {
    try {
      return await fn(span);
    } catch (error) {
      failSpan(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

/**
 * Runs `fn` outside any span, so that nothing of the trace goes along with the requests it
 * makes (a server asked then starts no span for it). A span is recorded for it only when it
 * throws an error that `failed` calls a failure (every error by default), from its start to
 * the throw, as a child of the active context. For work too frequent to trace every time (the
 * pieces of a download): a trace keeps the first few and the failures, and the others cost
 * neither a span nor an export.
 */
export async function withSpanOnFailure<T>(
  name: string,
  options: SpanOptions & { readonly failed?: (error: unknown) => boolean },
  fn: () => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  const startTime = Date.now();
  try {
    return await context.with(trace.deleteSpan(parent), fn);
  } catch (error) {
    if (options.failed !== undefined && !options.failed(error)) {
      throw error;
    }
    const span = tracer().startSpan(name, { ...startOptions(options), startTime }, parent);
    failSpan(span, error);
    span.end();
    throw error;
  }
}

/** The kind and attributes a span starts with (INTERNAL unless said). */
function startOptions(options: SpanOptions): { kind: SpanKind; attributes?: Attributes } {
  return {
    kind: options.kind ?? SpanKind.INTERNAL,
    ...(options.attributes === undefined ? {} : { attributes: options.attributes }),
  };
}

/** Marks `span` failed with `error`'s message (a string only: no objects that may hold secrets). */
export function failSpan(span: Span, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: message.slice(0, 512) });
  if (error instanceof Error) {
    span.recordException({ name: error.name, message: message.slice(0, 512) });
  }
}

/**
 * Starts a span that is not made active and is ended by the caller: for work that outlives
 * the function starting it (a response streamed after its handler returned). Returns the
 * span and the context to run the work in.
 */
export function startSpan(
  name: string,
  options: SpanOptions,
): { readonly span: Span; readonly context: Context } {
  const parent = options.parent ?? context.active();
  const span = tracer().startSpan(name, startOptions(options), parent);
  return { span, context: trace.setSpan(parent, span) };
}

/** Runs `fn` with `ctx` active (callbacks and promises started inside keep it). */
export function runInContext<T>(ctx: Context, fn: () => T): T {
  return context.with(ctx, fn);
}

const httpGetter: TextMapGetter<IncomingHttpHeaders> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key.toLowerCase()],
};

/**
 * The trace context an incoming HTTP request carries (`traceparent`, `tracestate`), as the
 * parent for its SERVER span; a root context when it carries none.
 */
export function contextFromHttp(headers: IncomingHttpHeaders): Context {
  return propagation.extract(ROOT_CONTEXT, headers, httpGetter);
}

/** Adds the active (or given) context's `traceparent`/`tracestate` to outgoing HTTP headers. */
export function injectHttp(headers: OutgoingHttpHeaders, ctx: Context = context.active()): void {
  propagation.inject(ctx, headers, {
    set: (carrier, key, value) => {
      carrier[key] = value;
    },
  });
}

/**
 * Records a moment in the active span (a span event named `name`), for the phases of work a
 * span covers that are not worth a span of their own: the first byte of a response, the
 * first piece hash heard. A no-op outside a span or without a started SDK.
 */
export function markSpan(name: string, attributes?: Attributes): void {
  trace.getActiveSpan()?.addEvent(name, attributes);
}

/** The active span, to record moments in later from another context (see `markSpan`). */
export function activeSpan(): Span | undefined {
  return trace.getActiveSpan();
}

/** `trace_id` and `span_id` of the active span, for log lines; empty outside a sampled span. */
export function traceFields(): { trace_id?: string; span_id?: string } {
  const span = trace.getActiveSpan();
  if (span === undefined) {
    return {};
  }
  const spanContext = span.spanContext();
  if (!isSpanContextValid(spanContext)) {
    return {};
  }
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
}

/**
 * Handles an HTTP request in a SERVER span continuing the caller's trace (its `traceparent`),
 * recording the response status when the handler is done.
 */
export function withServerSpan<T>(
  name: string,
  request: { readonly headers: IncomingHttpHeaders },
  reply: { readonly statusCode: number },
  attributes: Attributes,
  fn: () => Promise<T>,
): Promise<T> {
  return withSpan(
    name,
    { kind: SpanKind.SERVER, parent: contextFromHttp(request.headers), attributes },
    async (span) => {
      const result = await fn();
      span.setAttribute('http.response.status_code', reply.statusCode);
      return result;
    },
  );
}

/**
 * As `withServerSpan`, for a request whose caller decides what is traced: a SERVER span only
 * when the request carries a trace context. A piece request without one is one its caller
 * chose not to trace (see `withSpanOnFailure`), or one from a caller that does not trace at
 * all: a root trace of its own for each would be noise.
 */
export function withCallerServerSpan<T>(...args: Parameters<typeof withServerSpan<T>>): Promise<T> {
  const [, request, , , fn] = args;
  // A context that does not parse (empty, malformed, repeated) is no caller's trace either.
  const caller = trace.getSpanContext(contextFromHttp(request.headers));
  return caller !== undefined && isSpanContextValid(caller) ? withServerSpan(...args) : fn();
}
