package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Client is a thin Go client of the orders API (caps order uses it).
type Client struct {
	// Base is the hub's HTTP address, e.g. http://localhost:8080.
	Base string
	// Token is a vendor's or admin's token ("" on a hub without tokens).
	Token string
	// Store is the store to act for (an admin's, or on a hub without
	// tokens); "" for a vendor's token.
	Store string
	HTTP  *http.Client
}

// APIError is a problem document the API answered with.
type APIError struct {
	Status int
	Code   string
	Rule   string
	Detail string
}

func (e *APIError) Error() string {
	s := e.Code
	if e.Rule != "" {
		s += " (" + e.Rule + ")"
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return fmt.Sprintf("%s [HTTP %d]", s, e.Status)
}

// CreateOrder posts an order; key is the Idempotency-Key ("" for none).
// The answer's raw JSON is returned with it.
func (c *Client) CreateOrder(ctx context.Context, o NewOrderBody, key string) (*Order, []byte, error) {
	if o.Store == "" {
		o.Store = c.Store
	}
	var out Order
	raw, err := c.do(ctx, http.MethodPost, "/orders", nil, o, &out, "Idempotency-Key", key)
	return &out, raw, err
}

// GetOrder reads an order with its timeline.
func (c *Client) GetOrder(ctx context.Context, id string) (*Order, []byte, error) {
	var out Order
	raw, err := c.do(ctx, http.MethodGet, "/orders/"+url.PathEscape(id), c.storeQuery(), nil, &out)
	return &out, raw, err
}

// CancelOrder cancels an order.
func (c *Client) CancelOrder(ctx context.Context, id string) (*Order, []byte, error) {
	var out Order
	raw, err := c.do(ctx, http.MethodPost, "/orders/"+url.PathEscape(id)+"/cancel", c.storeQuery(), nil, &out)
	return &out, raw, err
}

// ListOrders reads a page of the store's orders.
func (c *Client) ListOrders(ctx context.Context, statuses []string, limit int, cursor string) (*OrderList, []byte, error) {
	q := c.storeQuery()
	for _, s := range statuses {
		q.Add("status", s)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	var out OrderList
	raw, err := c.do(ctx, http.MethodGet, "/orders", q, nil, &out)
	return &out, raw, err
}

func (c *Client) storeQuery() url.Values {
	q := url.Values{}
	if c.Store != "" {
		q.Set("store", c.Store)
	}
	return q
}

// maxAnswer bounds what is read of an answer.
const maxAnswer = 4 << 20

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any, hdr ...string) ([]byte, error) {
	u := strings.TrimRight(c.Base, "/") + Prefix + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] != "" {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err // a *url.Error: it names the method and URL
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode >= 300 {
		var p struct {
			Code, Rule, Detail string
		}
		if json.Unmarshal(raw, &p) != nil || p.Code == "" {
			return raw, &APIError{Status: resp.StatusCode, Code: "http_error", Detail: strings.TrimSpace(string(raw[:min(len(raw), 200)]))}
		}
		return raw, &APIError{Status: resp.StatusCode, Code: p.Code, Rule: p.Rule, Detail: p.Detail}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return raw, fmt.Errorf("%s %s: unreadable answer: %w", method, u, err)
	}
	return raw, nil
}
