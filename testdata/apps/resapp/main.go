// A sample app for pier's resource tests: it uses the Postgres, Redis and
// bucket connections pier injects, through the ecosystem's usual clients
// (pgx, go-redis, the AWS SDK), configured from the environment only.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

func main() {
	http.HandleFunc("/env", envNames)
	http.HandleFunc("/pg/exec", pgExec)
	http.HandleFunc("/pg/query", pgQuery)
	http.HandleFunc("/redis", redisDo)
	http.HandleFunc("/s3/put", s3Put)
	http.HandleFunc("/s3/get", s3Get)
	http.HandleFunc("/dial", dial)
	fmt.Println("listening on", os.Getenv("PORT"))
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// dial opens a TCP connection to ?addr=host:port: 200 if it connects.
func dial(w http.ResponseWriter, r *http.Request) {
	c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), 3*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	c.Close()
	fmt.Fprintln(w, "connected")
}

// envNames lists the names of the app's environment variables.
func envNames(w http.ResponseWriter, r *http.Request) {
	var names []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		names = append(names, k)
	}
	sort.Strings(names)
	json.NewEncoder(w).Encode(names)
}

// fail answers with the error; 403 for permission errors, so tests can
// tell "denied" from "broken".
func fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var pe *pgconn.PgError
	msg := err.Error()
	switch {
	case errors.As(err, &pe) && (pe.Code == "42501" || pe.Code == "28P01"):
		code = http.StatusForbidden
	case strings.Contains(msg, "NOPERM") || strings.Contains(msg, "AccessDenied") || strings.Contains(msg, "WRONGPASS"):
		code = http.StatusForbidden
	}
	http.Error(w, msg, code)
}

func pg(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
}

// pgExec runs the SQL statement in the body.
func pgExec(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	sql, _ := io.ReadAll(r.Body)
	conn, err := pg(ctx)
	if err != nil {
		fail(w, err)
		return
	}
	defer conn.Close(ctx)
	tag, err := conn.Exec(ctx, string(sql))
	if err != nil {
		fail(w, err)
		return
	}
	fmt.Fprintln(w, tag.String())
}

// pgQuery runs the query in the body and prints the first column of each
// row, one per line.
func pgQuery(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	sql, _ := io.ReadAll(r.Body)
	conn, err := pg(ctx)
	if err != nil {
		fail(w, err)
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, string(sql))
	if err != nil {
		fail(w, err)
		return
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			fail(w, err)
			return
		}
		out = append(out, fmt.Sprint(vals[0]))
	}
	if err := rows.Err(); err != nil {
		fail(w, err)
		return
	}
	fmt.Fprintln(w, strings.Join(out, "\n"))
}

// redisDo runs the command given as ?c=SET&c=web:x&c=1.
func redisDo(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	opt, err := redis.ParseURL(os.Getenv("REDIS_URL"))
	if err != nil {
		fail(w, err)
		return
	}
	c := redis.NewClient(opt)
	defer c.Close()
	var args []any
	for _, a := range r.URL.Query()["c"] {
		args = append(args, a)
	}
	v, err := c.Do(ctx, args...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		fail(w, err)
		return
	}
	fmt.Fprintln(w, v)
}

// s3Client is configured from the environment alone (AWS_ENDPOINT_URL_S3,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
func s3Client(ctx context.Context) (*s3.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, err
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }), nil
}

func bucketOf(r *http.Request) string {
	if b := r.URL.Query().Get("bucket"); b != "" {
		return b
	}
	return os.Getenv("BUCKET_NAME")
}

func s3Put(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	c, err := s3Client(ctx)
	if err != nil {
		fail(w, err)
		return
	}
	body, _ := io.ReadAll(r.Body)
	_, err = c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucketOf(r)), Key: aws.String(r.URL.Query().Get("key")),
		Body: strings.NewReader(string(body))})
	if err != nil {
		fail(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

func s3Get(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	c, err := s3Client(ctx)
	if err != nil {
		fail(w, err)
		return
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucketOf(r)), Key: aws.String(r.URL.Query().Get("key"))})
	if err != nil {
		fail(w, err)
		return
	}
	defer out.Body.Close()
	io.Copy(w, out.Body)
}
