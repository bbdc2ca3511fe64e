import { Prisma } from './generated/client.js';

/**
 * The condition under which a device can be written to: PQXDH needs the
 * account's identity key and the device's registration id, signed prekey and
 * Kyber last-resort key. A device without them is invisible to senders and to
 * bundle fetches alike. For queries that join `accounts a` and `devices d`.
 */
export const deviceCanReceive = Prisma.sql`a.identity_key IS NOT NULL
         AND d.registration_id IS NOT NULL
         AND d.signed_prekey IS NOT NULL
         AND d.kyber_last_resort_key IS NOT NULL`;
