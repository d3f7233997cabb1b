# One control plane (a NATS cluster per region, joined by gateways; origin
# replicas in eu and us on one PostgreSQL) and a site of edges in each of
# eu, us and ap, each edge on its own region's NATS cluster, gossiping with
# the other edges of its site. See ../../README.md.

module "control_plane" {
  source = "../../modules/control-plane"

  regions = { for r, h in var.regions : r => {
    nats    = [for ip in h.nats : { host = ip, ssh_user = var.ssh_user }]
    origins = [for ip in h.origins : { host = ip, ssh_user = var.ssh_user }]
  } }
  postgres_url         = var.postgres_url
  admin_password       = var.admin_password
  origin_keys_dir      = var.origin_keys_dir
  stream_replicas      = 3
  dist_dir             = var.dist_dir
  ssh_private_key_file = var.ssh_private_key_file
  ssh_host_keys        = var.ssh_host_keys
}

module "site" {
  source   = "../../modules/site"
  for_each = var.regions

  site_name            = each.key
  edges                = [for ip in each.value.edges : { host = ip, ssh_user = var.ssh_user }]
  upstream_urls        = each.value.upstreams
  nats_urls            = module.control_plane.nats_client_urls[each.key]
  origin_public_key    = module.control_plane.origin_public_key
  nats_creds_dir       = module.control_plane.edge_nats_creds_dir
  gossip_keys          = var.gossip_keys
  dist_dir             = var.dist_dir
  ssh_private_key_file = var.ssh_private_key_file
  ssh_host_keys        = var.ssh_host_keys
}
