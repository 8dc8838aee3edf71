# Shared by the bench scripts: the two-region MRR setup both use (sourced, not run).
#
# Writer region ap-northeast (API 26000, peer 26001) reaches the reader us-west (API 26010,
# peer 26011) through a wan-proxy on 26002; us-west reaches ap-northeast through 26012.

# mrr_lanes_config: a `lanes:` line setting queue_delay_target to $QUEUE_TARGET (e.g. 100ms)
# when that is set; nothing otherwise (builds before lanes refuse the key).
mrr_lanes_config() {
  if [ -n "${QUEUE_TARGET:-}" ]; then echo "lanes: { queue_delay_target: $QUEUE_TARGET }"; fi
}

# mrr_two_region_configs DIR: writes DIR/ap-northeast.yaml and DIR/us-west.yaml.
mrr_two_region_configs() {
  local dir=$1 region api peer
  for region in ap-northeast us-west; do
    if [ "$region" = ap-northeast ]; then api=26000; peer=26001; else api=26010; peer=26011; fi
    cat > "$dir/$region.yaml" <<CONF
cluster: bench
region: $region
secret: "bench-secret-0123456789"
insecure_plaintext: true
data_dir: $dir/mrr-$region
listen: { api: 127.0.0.1:$api, peer: 127.0.0.1:$peer }
durability: fsync
$(mrr_lanes_config)
regions:
  - name: ap-northeast
    endpoint: $( [ "$region" = ap-northeast ] && echo http://127.0.0.1:26001 || echo http://127.0.0.1:26012 )
    api: http://127.0.0.1:26000
  - name: us-west
    endpoint: $( [ "$region" = us-west ] && echo http://127.0.0.1:26011 || echo http://127.0.0.1:26002 )
    api: http://127.0.0.1:26010
CONF
  done
}

# mrr_applied API_PORT: how many of ap-northeast's writes the region at API_PORT has applied,
# summed over its lanes (`ap-northeast`, `ap-northeast.urgent`, `ap-northeast.bulk`).
mrr_applied() {
  curl -s "http://127.0.0.1:$1/v1/status" | python3 -c "import json,sys; a=json.load(sys.stdin)['applied']; print(sum(v for k,v in a.items() if k.split('.')[0]=='ap-northeast'))"
}
