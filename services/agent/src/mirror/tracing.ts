/**
 * The root span of a pull: one SERVER span per mirror request, from the request to the last
 * byte of its response (blob bodies stream after the handler has returned). containerd sends
 * no trace context, so each request starts its own trace; a client that sends `traceparent`
 * gets its request joined to its own trace.
 */
import { contextFromHttp, SpanKind, SpanStatusCode, startSpan, type Context } from '@shoal/runtime';
import type { FastifyReply, FastifyRequest } from 'fastify';

import type { PullTarget } from './path.js';

/**
 * Starts the request's span, ended when its response closes, and returns the context to
 * answer it in. Attributes name the registry, repository and digest, never a header value.
 */
export function traceMirrorRequest(
  request: FastifyRequest,
  reply: FastifyReply,
  target: PullTarget,
  registry: string,
): Context {
  const { span, context } = startSpan(`mirror ${request.method} ${target.kind}`, {
    kind: SpanKind.SERVER,
    parent: contextFromHttp(request.headers),
    attributes: {
      'http.request.method': request.method,
      'oci.registry': registry,
      'oci.repository': target.name,
      ...(target.kind === 'blob'
        ? { 'oci.digest': target.digest.toString() }
        : {
            'oci.reference':
              target.reference.kind === 'tag'
                ? target.reference.tag
                : target.reference.digest.toString(),
          }),
      ...(request.headers.range === undefined
        ? {}
        : { 'http.request.range': request.headers.range }),
    },
  });
  reply.raw.once('close', () => {
    const status = reply.raw.statusCode;
    span.setAttribute('http.response.status_code', status);
    if (!reply.raw.writableFinished) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'response cut before its end' });
    } else if (status >= 500) {
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  });
  return context;
}
