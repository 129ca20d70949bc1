/**
 * Trace context in NATS message headers (W3C `traceparent`/`tracestate`), so a trace follows
 * an event from its publisher to its consumer. Part of `@shoal/runtime/nats`.
 */
import { context, propagation, ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';

/**
 * Headers carrying the active (or given) context, to pass as `{ headers }` when publishing;
 * undefined when there is no trace to carry (tracing off, or no span active).
 */
export function traceHeaders(ctx: Context = context.active()): MsgHdrs | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
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
