# Appends the rule that builds the Rust part of ngx_http_ktls_module to
# objs/Makefile.  Sourced by nginx's auto/make from the nginx source root.

ngx_ktls_objs=`cd "$NGX_OBJS" && pwd`
ngx_ktls_src=`pwd`
ngx_ktls_target="$ngx_ktls_objs/addon/ktls/target"

mkdir -p "$ngx_ktls_objs/addon/ktls"

# Built without the "export-modules" feature: nginx's own build generates
# the ngx_modules table.  Cargo decides what is up to date, so the rule
# always runs it.
cat << END                                            >> $NGX_MAKEFILE

$ngx_ktls_lib: ngx_ktls_cargo
	cp "$ngx_ktls_target/release/libngx_http_ktls_module.a" "$ngx_ktls_lib"

ngx_ktls_cargo: $NGX_OBJS${ngx_dirsep}ngx_auto_config.h
	cd "$ngx_addon_dir" \\
	&& NGINX_SOURCE_DIR="$ngx_ktls_src" NGINX_BUILD_DIR="$ngx_ktls_objs" \\
	   ${NGX_CARGO:-cargo} rustc --release --lib --crate-type staticlib \\
	   --no-default-features --target-dir "$ngx_ktls_target"

.PHONY: ngx_ktls_cargo

END
