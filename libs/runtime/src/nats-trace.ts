/**
 * Trace context in NATS message headers (W3C `traceparent`/`tracestate`), so a trace follows
 * an event from its publisher to its consumer. Part of `@shoal/runtime/nats`.
 */
import { context, propagation, ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';

/** The W3C trace-context headers. */
const TRACE_CONTEXT_HEADERS = ['traceparent', 'tracestate'] as const;

/**
 * Headers carrying the active context, to pass as `{ headers }` when publishing; undefined
 * when there is no trace to carry (no span active). With tracing off in this process, the
 * trace-context headers of `passOn` (the message being answered) are copied instead, so a
 * trace still crosses a service that does not export spans.
 */
export function traceHeaders(passOn?: MsgHdrs): MsgHdrs | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  if (Object.keys(carrier).length === 0 && passOn !== undefined) {
    for (const name of TRACE_CONTEXT_HEADERS) {
      const value = passOn.get(name);
      if (value !== '') {
        carrier[name] = value;
      }
    }
  }
  const entries = Object.entries(carrier);
  if (entries.length === 0) {
    return undefined;
  }
  const headers = natsHeaders();
  for (const [name, value] of entries) {
    headers.set(name, value);
  }
  return headers;
}

/**
 * The trace context a received message carries, as the parent of its CONSUMER span; a root
 * context when it carries none.
 */
export function contextFromHeaders(headers: MsgHdrs | undefined): Context {
  if (headers === undefined) {
    return ROOT_CONTEXT;
  }
  return propagation.extract(ROOT_CONTEXT, headers, {
    keys: (carrier) => carrier.keys(),
    get: (carrier, key) => {
      const value = carrier.get(key);
      return value === '' ? undefined : value;
    },
  });
}
