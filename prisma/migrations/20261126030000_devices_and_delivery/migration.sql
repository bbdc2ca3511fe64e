-- CreateTable
CREATE TABLE "sent_requests" (
    "sender_device_row_id" UUID NOT NULL,
    "request_id" UUID NOT NULL,
    "server_timestamp" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "sent_requests_pkey" PRIMARY KEY ("sender_device_row_id","request_id")
);

-- CreateTable
CREATE TABLE "unlinked_devices" (
    "account_id" UUID NOT NULL,
    "device_id" INTEGER NOT NULL,
    "registration_id" INTEGER,
    "unlinked_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "unlinked_devices_pkey" PRIMARY KEY ("account_id","device_id")
);

-- CreateTable
CREATE TABLE "provisioning_slots" (
    "id" UUID NOT NULL,
    "secret_hash" BYTEA NOT NULL,
    "account_id" UUID,
    "message" BYTEA,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "provisioning_slots_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "messages_server_timestamp_idx" ON "messages"("server_timestamp");

-- CreateIndex
CREATE INDEX "sent_requests_created_at_idx" ON "sent_requests"("created_at");

-- CreateIndex
CREATE INDEX "provisioning_slots_expires_at_idx" ON "provisioning_slots"("expires_at");

-- AddForeignKey
ALTER TABLE "sent_requests" ADD CONSTRAINT "sent_requests_sender_device_row_id_fkey" FOREIGN KEY ("sender_device_row_id") REFERENCES "devices"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "unlinked_devices" ADD CONSTRAINT "unlinked_devices_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "provisioning_slots" ADD CONSTRAINT "provisioning_slots_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;
