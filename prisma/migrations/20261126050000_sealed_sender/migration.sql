-- AlterTable
ALTER TABLE "accounts" ADD COLUMN     "unidentified_access_key" BYTEA,
ADD COLUMN     "unrestricted_unidentified_access" BOOLEAN NOT NULL DEFAULT false;

-- AlterTable
ALTER TABLE "messages" ALTER COLUMN "sender_username" DROP NOT NULL;

-- CreateTable
CREATE TABLE "sealed_send_requests" (
    "request_id" UUID NOT NULL,
    "server_timestamp" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "sealed_send_requests_pkey" PRIMARY KEY ("request_id")
);

-- CreateIndex
CREATE INDEX "sealed_send_requests_created_at_idx" ON "sealed_send_requests"("created_at");
