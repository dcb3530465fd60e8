//! Routing: (method, path) → endpoint index, built once from config. A linear scan over a few
//! dozen byte strings beats hashing at this size and allocates nothing.

use crate::config::{Config, Method};

pub enum Route {
    Found(u16),
    /// OPTIONS on a configured path (RFC 9110 §9.3.7): answered 204 with this `Allow` value,
    /// never an event. A CORS preflight on a POST path is told apart before routing.
    Options(&'static str),
    /// The path exists for other methods; the value is the `Allow` header's value.
    MethodNotAllowed(&'static str),
    NotFound,
}

/// The request's method as routing sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestMethod {
    Get,
    Head,
    Post,
    Options,
    Other,
}

pub struct Routes {
    paths: Vec<(Box<[u8]>, Method, u16)>,
}

impl Routes {
    pub fn new(cfg: &Config) -> Routes {
        Routes {
            paths: cfg
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_bytes().into(), e.method, i as u16))
                .collect(),
        }
    }

    #[inline]
    pub fn route(&self, method: RequestMethod, path: &[u8]) -> Route {
        let (mut get, mut post) = (false, false);
        for (p, m, i) in &self.paths {
            if &p[..] != path {
                continue;
            }
            match (m, method) {
                (Method::Get, RequestMethod::Get | RequestMethod::Head) | (Method::Post, RequestMethod::Post) => {
                    return Route::Found(*i)
                }
                (Method::Get, _) => get = true,
                (Method::Post, _) => post = true,
            }
        }
        // Every configured path answers OPTIONS (`Route::Options`; on a POST path also the CORS
        // preflight, `net::connection`), so Allow names it: RFC 9110 §10.2.1 lists every
        // method the resource supports. Static strings: routing allocates nothing.
        let allow = match (get, post) {
            (false, false) => return Route::NotFound,
            (true, false) => "GET, HEAD, OPTIONS",
            (false, true) => "POST, OPTIONS",
            (true, true) => crate::http::response::ALLOW_ALL,
        };
        if method == RequestMethod::Options {
            Route::Options(allow)
        } else {
            Route::MethodNotAllowed(allow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_routes_like_get_and_wrong_method_names_allow() {
        let r = Routes::new(&Config::embedded());
        assert!(matches!(r.route(RequestMethod::Get, b"/i"), Route::Found(0)));
        assert!(matches!(r.route(RequestMethod::Head, b"/i"), Route::Found(0)));
        assert!(matches!(r.route(RequestMethod::Post, b"/i"), Route::MethodNotAllowed("GET, HEAD, OPTIONS")));
        assert!(matches!(r.route(RequestMethod::Other, b"/batch"), Route::MethodNotAllowed("POST, OPTIONS")));
        assert!(matches!(r.route(RequestMethod::Get, b"/nope"), Route::NotFound));
        assert!(matches!(r.route(RequestMethod::Get, b"/i/"), Route::NotFound));
    }

    #[test]
    fn options_on_a_configured_path_names_its_methods_and_options() {
        let r = Routes::new(&Config::embedded());
        assert!(matches!(r.route(RequestMethod::Options, b"/i"), Route::Options("GET, HEAD, OPTIONS")));
        assert!(matches!(r.route(RequestMethod::Options, b"/batch"), Route::Options("POST, OPTIONS")));
        assert!(matches!(r.route(RequestMethod::Options, b"/nope"), Route::NotFound));
    }
}
