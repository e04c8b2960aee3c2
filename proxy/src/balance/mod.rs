//! Load balancing and endpoint guards: which endpoint gets the next request, and which are out.
