/** What a NATS server tells a connection it refused (permissions violations), as tests read it. */
import type { NatsConnection } from '@nats-io/transport-node';

/**
 * The errors the server sends `nc` from now on, as text, in the order they arrive. The list
 * fills while the connection lives: tests wait for the entry naming the refused subject.
 */
export function serverErrors(nc: NatsConnection): string[] {
  const errors: string[] = [];
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'error') {
        errors.push(String(status.error));
      }
    }
  })();
  return errors;
}
