/**
 * `want-forwarded`: a tracker replica's reply to a want another replica forwarded to it
 * (`forwardedWantSubject`). The forwarding replica holds the want in JetStream until this
 * reply comes, so a replica that dies with forwarded wants loses none of them.
 */
import { z } from 'zod';

export const wantForwarded = z.strictObject({
  type: z.literal('want-forwarded'),
  /**
   * `answered`: the hand-out went out (or a newer want of the same asker will carry it);
   * acknowledge the want. `retry`: a transient failure; deliver the want again later.
   * `not-owner`: this replica does not hold the blob (the replicas disagree about who is
   * live for a moment); deliver it again, or answer it yourself.
   */
  outcome: z.enum(['answered', 'retry', 'not-owner']),
});
export type WantForwarded = z.infer<typeof wantForwarded>;
