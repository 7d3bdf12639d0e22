#!/usr/bin/env bash
# A dataset export by shell alone, in the spirit of the "Full Automation Script" on Visual Layer's
# docs page "Exporting a Dataset via curl": curl for HTTP; grep and cut to read the JSON, which
# only works on the compact JSON that FastAPI writes ({"id":"..."}, no space after the colon).
#
# Environment: VL_BASE_URL, VL_DATASET_ID, OUT (the ZIP to write), POLL_S (seconds between
# polls; the docs poll every 5), EXPORT_FORMAT (parquet), VL_TOKEN (a bearer token, cloud only).
set -euo pipefail

BASE_URL="${VL_BASE_URL:?set VL_BASE_URL}"
DATASET_ID="${VL_DATASET_ID:?set VL_DATASET_ID}"
OUT="${OUT:-export.zip}"
AUTH=()
if [ -n "${VL_TOKEN:-}" ]; then
    AUTH=(-H "Authorization: Bearer $VL_TOKEN")
fi

echo "Starting export of $DATASET_ID"
RESPONSE=$(curl -s -S "${AUTH[@]}" \
    "$BASE_URL/api/v1/dataset/$DATASET_ID/export_context_async?file_name=export.zip&export_format=${EXPORT_FORMAT:-parquet}&include_images=true")
TASK_ID=$(echo "$RESPONSE" | grep -o '"id":"[^"]*' | cut -d'"' -f4)
echo "Export task: $TASK_ID"

while true; do
    STATUS_JSON=$(curl -s -S "${AUTH[@]}" \
        "$BASE_URL/api/v1/dataset/$DATASET_ID/export_status?export_task_id=$TASK_ID")
    STATUS=$(echo "$STATUS_JSON" | grep -o '"status":"[^"]*' | cut -d'"' -f4)
    echo "Status: $STATUS"
    case "$STATUS" in
        COMPLETED) break ;;
        FAILED | REJECTED) echo "Export ended $STATUS" >&2; exit 1 ;;
    esac
    sleep "${POLL_S:-5}"
done

DOWNLOAD_URI=$(echo "$STATUS_JSON" | grep -o '"download_uri":"[^"]*' | cut -d'"' -f4)
# The cloud answers a presigned URL; an on-prem server a path to join to its own address.
case "$DOWNLOAD_URI" in
    http://* | https://*) ;;
    *) DOWNLOAD_URI="$BASE_URL$DOWNLOAD_URI" ;;
esac
echo "Downloading $DOWNLOAD_URI"
# No bearer token here: the download host is object storage, which refuses one.
curl -s -S -f -L -o "$OUT" "$DOWNLOAD_URI"
echo "Saved $OUT"
