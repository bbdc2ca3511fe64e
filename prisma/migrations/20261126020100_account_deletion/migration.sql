-- AlterTable
ALTER TABLE "messages" ADD COLUMN     "sender_username" VARCHAR(32);

-- Backfill: the sender's username of every queued message; a message whose
-- sender no longer exists keeps the empty source it was delivered with so far.
UPDATE "messages" AS m SET "sender_username" = COALESCE((SELECT a."username" FROM "accounts" AS a WHERE a."id" = m."sender_account_id"), '');
ALTER TABLE "messages" ALTER COLUMN "sender_username" SET NOT NULL;

-- CreateTable
CREATE TABLE "retired_usernames" (
    "username" VARCHAR(32) NOT NULL,
    "deleted_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "retired_usernames_pkey" PRIMARY KEY ("username")
);
