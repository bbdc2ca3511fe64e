-- AlterTable
-- A refresh token names the device row it was issued to, so that unlinking a
-- device deletes its tokens by cascade and a device linked later under the
-- same device id cannot redeem them. Existing tokens get the row of their
-- (account, device id); a token whose device is gone is dropped.
ALTER TABLE "refresh_tokens" ADD COLUMN     "device_row_id" UUID;
UPDATE "refresh_tokens" t SET "device_row_id" = d."id"
  FROM "devices" d
 WHERE d."account_id" = t."account_id" AND d."device_id" = t."device_id";
DELETE FROM "refresh_tokens" WHERE "device_row_id" IS NULL;
ALTER TABLE "refresh_tokens" ALTER COLUMN "device_row_id" SET NOT NULL;

-- CreateIndex
CREATE INDEX "refresh_tokens_device_row_id_idx" ON "refresh_tokens"("device_row_id");

-- AddForeignKey
ALTER TABLE "refresh_tokens" ADD CONSTRAINT "refresh_tokens_device_row_id_fkey" FOREIGN KEY ("device_row_id") REFERENCES "devices"("id") ON DELETE CASCADE ON UPDATE CASCADE;
